"""Many clients submitting and polling at once, against a real API and worker.

    .venv/bin/python bench/load.py                       # embedded default and PostgreSQL + Redis
    .venv/bin/python bench/load.py --backend embedded --clients 50 --jobs 300
    .venv/bin/python bench/load.py --scenario flood      # one owner floods, another is polite

Each client submits its share of tiny jobs (one epoch on 64 synthetic images), each with an
Idempotency-Key it sends again after a connection error, and polls each job a few times. It
prints submissions per second, POST and GET latency (p50, p99), errors, and then checks that
every acknowledged job exists exactly once and finishes, run once (attempts = 1).

--scenario flood: one owner submits --jobs jobs from --clients threads as fast as it can,
while another polls its job list and, once the flood is queued, submits one job. It prints
the polite owner's GET and POST latency (p50, p99), how long its job waited to start, and how
many of the flood's jobs started in between (fair dispatch: at most one per worker).
PostgreSQL and Redis: LSQ_BENCH_PG_URL (a server URL) and LSQ_BENCH_REDIS_URL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("LSQ_BENCH_PG_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1/postgres")
REDIS = os.environ.get("LSQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SPEC = {
    "name": "load",
    "dataset": {"name": "synthetic", "train_size": 64, "test_size": 32},
    "model": {"arch": "resnet20"},
    "training": {"epochs": 1, "batch_size": 64},
}
POLLS = 3


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lsq(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "worker.cli", *args], env=env, cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


class Load:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.post_ms: list[float] = []
        self.get_ms: list[float] = []
        self.errors: list[str] = []
        self.acknowledged: dict[str, int] = {}
        self.lock = threading.Lock()

    def client(self, keys: list[str]) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=60) as http:
            for key in keys:
                job_id = self._submit(http, key)
                for _ in range(POLLS):
                    started = time.perf_counter()
                    try:
                        response = http.get(f"/v1/jobs/{job_id}")
                    except httpx.HTTPError as e:
                        self._error(f"GET: {type(e).__name__}")
                        continue
                    self._took(self.get_ms, started)
                    if response.status_code != 200:
                        self._error(f"GET {response.status_code}")

    def _submit_all(self, keys: list[str]) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=60) as http:
            for key in keys:
                self._submit(http, key)

    def started_between(self, after: datetime, before: datetime) -> int:
        """How many of this owner's jobs started in (after, before)."""
        auth = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=60) as http:
            times = [http.get(f"/v1/jobs/{i}").json()["started_at"] for i in self._ids()]
        return sum(1 for t in times if t and after < datetime.fromisoformat(t) < before)

    def cancel_all(self) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=60) as http:
            for job_id in self._ids():
                http.post(f"/v1/jobs/{job_id}/cancel")

    def _ids(self) -> list[int]:
        with self.lock:
            return sorted(self.acknowledged.values())

    def _submit(self, http: httpx.Client, key: str) -> int | None:
        for _ in range(5):  # retried with the same key: never a second job
            started = time.perf_counter()
            try:
                response = http.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": key})
            except httpx.HTTPError as e:
                self._error(f"POST: {type(e).__name__}")
                continue
            self._took(self.post_ms, started)
            if response.status_code in (200, 201):
                with self.lock:
                    self.acknowledged[key] = response.json()["id"]
                return response.json()["id"]
            self._error(f"POST {response.status_code}")
        return None

    def _took(self, into: list[float], started: float) -> None:
        with self.lock:
            into.append(1000 * (time.perf_counter() - started))

    def _error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


@contextlib.contextmanager
def service(backend: str, folder: Path, **settings: str) -> Iterator[tuple[str, str, dict]]:
    """An API and a worker on `backend` (embedded or postgres, on a new database): yields the
    API's URL, a token, and the processes' environment; stops them and drops the database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LSQ_", "DATABASE_URL"))}
    env |= {
        "LSQ_DATA_DIR": str(folder),
        "LSQ_QUEUE": f"lsq-load-{uuid.uuid4().hex[:8]}",
        "LSQ_REQUESTS_PER_SECOND": "100000",
        "LSQ_REQUEST_BURST": "100000",
        "LSQ_HEARTBEAT_SECONDS": "1",
        "LSQ_LEASE_SECONDS": "10",
        "LSQ_TORCH_THREADS": "1",
        **settings,
    }
    database = None
    if backend == "postgres":
        database = f"lsq_load_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{database}"'))
        env["DATABASE_URL"] = make_url(PG).set(database=database).render_as_string(False)
        env["CELERY_BROKER_URL"] = REDIS
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = make_token(env, "load")
    procs = {
        "api": lsq("api", "--port", str(port), "--access-log", "writes", "--log-level",
                   "warning", env=env, log=folder / "api.log"),
        "worker": lsq("worker", "--no-banner", "--log-level", "warning", env=env,
                      log=folder / "worker.log"),
    }  # fmt: skip
    try:
        _wait_ready(url)
        yield url, token, env
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(120)
        if database:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def make_token(env: dict[str, str], owner: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "token", "create", owner], env=env, cwd=ROOT,
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()[-1]  # fmt: skip


def run(backend: str, clients: int, jobs: int, folder: Path) -> None:
    with service(backend, folder, LSQ_MAX_QUEUED_PER_OWNER=str(jobs + 1)) as (url, token, _):
        load = Load(url, token)
        keys = [f"load-{i}" for i in range(jobs)]
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(load.client, [keys[i::clients] for i in range(clients)]))
        seconds = time.perf_counter() - started
        _report(backend, clients, jobs, seconds, load)
        _verify(url, token, load, timeout=60 + 3 * jobs)


def flood(backend: str, clients: int, jobs: int, folder: Path) -> None:
    """One owner floods the queue; another polls and submits one job (see the docstring)."""
    with service(backend, folder, LSQ_MAX_QUEUED_PER_OWNER=str(jobs + 1)) as (url, _, env):
        loud = Load(url, make_token(env, "flood"))
        keys = [f"flood-{i}" for i in range(jobs)]
        polite = Polite(url, make_token(env, "polite"))
        poller = threading.Thread(target=polite.poll, daemon=True)
        poller.start()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(loud._submit_all, [keys[i::clients] for i in range(clients)]))
        job = polite.submit()
        ended = polite.wait(job["id"])
        polite.stop.set()
        poller.join()
        _report_flood(backend, loud, polite, job, ended)
        loud.cancel_all()


class Polite:
    """An owner who polls its jobs twice a second and submits one job."""

    def __init__(self, url: str, token: str) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        self.http = httpx.Client(base_url=url, headers=auth, timeout=60)
        self.get_ms: list[float] = []
        self.post_ms: list[float] = []
        self.stop = threading.Event()

    def poll(self) -> None:
        with httpx.Client(base_url=str(self.http.base_url), headers=self.http.headers) as http:
            while not self.stop.wait(0.5):
                started = time.perf_counter()
                http.get("/v1/jobs", params={"limit": 20}).raise_for_status()
                self.get_ms.append(1000 * (time.perf_counter() - started))

    def submit(self) -> dict:
        started = time.perf_counter()
        response = self.http.post("/v1/jobs", json={**SPEC, "name": "polite"})
        self.post_ms.append(1000 * (time.perf_counter() - started))
        response.raise_for_status()
        return response.json()

    def wait(self, job_id: int) -> dict:
        while (job := self.http.get(f"/v1/jobs/{job_id}").json())["status"] in RUNNING:
            time.sleep(0.2)
        return job


RUNNING = ("queued", "running")


def _report_flood(backend: str, loud: Load, polite: Polite, job: dict, ended: dict) -> None:
    submitted = datetime.fromisoformat(job["created_at"])
    started = datetime.fromisoformat(ended["started_at"])
    ahead = loud.started_between(submitted, started)
    get = polite.get_ms
    print(
        f"{backend} flood: {len(loud.acknowledged)} jobs of the flood queued; the polite "
        f"owner's GET p50 {percentile(get, 50):.0f} ms p99 {percentile(get, 99):.0f} ms "
        f"({len(get)} GETs), POST {polite.post_ms[0]:.0f} ms; its job waited "
        f"{(started - submitted).total_seconds():.1f} s and started after {ahead} of the "
        f"flood's jobs, ended {ended['status']}",
        flush=True,
    )


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the service at {url} was not ready")


def _report(backend: str, clients: int, jobs: int, seconds: float, load: Load) -> None:
    post, get = load.post_ms, load.get_ms
    print(
        f"{backend}: {len(load.acknowledged)}/{jobs} submissions by {clients} clients in "
        f"{seconds:.1f} s = {len(load.acknowledged) / seconds:.1f} submissions/s; "
        f"POST p50 {percentile(post, 50):.0f} ms p99 {percentile(post, 99):.0f} ms; "
        f"GET p50 {percentile(get, 50):.0f} ms p99 {percentile(get, 99):.0f} ms "
        f"({len(get)} GETs); errors: {len(load.errors)} {sorted(set(load.errors))}",
        flush=True,
    )


def _verify(url: str, token: str, load: Load, timeout: float) -> None:
    """Every acknowledged job exists exactly once and ends succeeded, run once."""
    auth = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    with httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        while True:
            jobs, cursor = [], None
            while True:
                params = {"limit": 200} | ({"cursor": cursor} if cursor else {})
                page = http.get("/v1/jobs", params=params).json()
                jobs += page["items"]
                if not (cursor := page["next_cursor"]):
                    break
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
                break
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"jobs still unfinished after {timeout:.0f} s")
            time.sleep(2)
    ids = [j["id"] for j in jobs]
    lost = set(load.acknowledged.values()) - set(ids)
    extra = len(ids) - len(set(load.acknowledged.values()))
    bad = [j["id"] for j in jobs if j["status"] != "succeeded" or j["attempts"] != 1]
    print(
        f"  verified in {time.perf_counter() - started:.0f} s: {len(ids)} jobs stored, "
        f"{len(lost)} acknowledged but lost, {extra} duplicated or unacknowledged, "
        f"{len(bad)} not succeeded exactly once",
        flush=True,
    )
    if lost or extra or bad:
        raise SystemExit(f"FAILED: lost {sorted(lost)}, extra {extra}, bad {bad[:10]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "postgres", "both"], default="both")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--scenario", choices=["submissions", "flood"], default="submissions")
    args = parser.parse_args()
    backends = ["embedded", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        folder = Path(tempfile.mkdtemp(prefix=f"lsq-load-{backend}-"))
        scenario = flood if args.scenario == "flood" else run
        scenario(backend, args.clients, args.jobs, folder)
        print(f"  logs in {folder}")


if __name__ == "__main__":
    main()
