"""Faults with real processes: the database out of reach in the middle of a job (the worker
fences itself, does not fail the job, and resumes it when the database is back), a broker that
cannot be reached at submission, and a Redis restarted without its data."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .conftest import Proc, Service, bearer, free_port, make_token, service_env, tiny_spec


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_database_outage_mid_job_resumes_the_job(new_pg_database, pg_server, redis_url,
                                                    tmp_path) -> None:  # fmt: skip
    url = new_pg_database()
    name = make_url(url).database
    svc = Service("outage", service_env(tmp_path, url, redis_url), tmp_path)
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    try:
        svc.wait_ready()
        job = svc.submit(tiny_spec("outage", training={"epochs": 6}))
        svc.wait(job["id"], until=lambda j: len(j["epochs"]) >= 1)
        with admin.connect() as conn:  # cut the database off, and every open connection to it
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :name"), {"name": name})  # fmt: skip
        time.sleep(8)  # longer than the lease (5 s)
        # it stopped training: at an epoch's record, or when its heartbeats ran out of lease
        log = svc.worker.output()
        assert "database unavailable, retrying" in log or "lease not renewed" in log, log
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        done = svc.wait(job["id"], timeout=180)
        assert done["status"] == "succeeded", (done["error"], svc.diagnostics())
        assert [e["epoch"] for e in done["epochs"]] == [1, 2, 3, 4, 5, 6]
        assert done["attempts"] >= 2  # taken up again, from its checkpoint
        assert svc.worker.alive()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()
        svc.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_the_api_could_not_queue_is_published_by_a_worker_sweep(
    new_pg_database, redis_url, tmp_path
) -> None:
    url = new_pg_database()
    env = service_env(tmp_path, url, redis_url, LSQ_SWEEP_SECONDS="1")
    # The API's broker is unreachable (nothing listens on that port): its publish fails.
    api_env = env | {"CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    port = free_port()
    api = Proc(["api", "--port", str(port)], api_env, tmp_path / "api.log")
    worker = Proc(["worker"], env, tmp_path / "worker.log")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 90
        while "ready" not in worker.output() or not _answers(http):
            assert api.alive() and worker.alive() and time.monotonic() < deadline
            time.sleep(0.3)
        http.headers.update(bearer(make_token(env)))
        response = http.post("/v1/jobs", json=tiny_spec("unqueued", training={"epochs": 1}))
        assert response.status_code == 201, response.text  # stored, even though not queued
        job_id = response.json()["id"]
        assert "is stored but not queued" in api.output()
        while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline + 120, worker.output()[-3000:]
            time.sleep(0.3)
        assert f"publishing jobs [{job_id}]" in worker.output()
        assert job["attempts"] == 1
    finally:
        http.close()
        worker.stop()
        api.stop()


def _answers(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _redis(port: int, folder: Path) -> Proc:
    """A Redis that keeps nothing on disk: a restart loses every message."""
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(folder)]  # fmt: skip
    proc = Proc(args, dict(os.environ), folder / f"redis-{time.monotonic_ns()}.log", program=())
    deadline = time.monotonic() + 30
    while b"Ready to accept connections" not in proc.log.read_bytes():
        assert proc.alive() and time.monotonic() < deadline, proc.output()
        time.sleep(0.1)
    return proc


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_jobs_a_restarted_redis_lost_are_published_again_and_run_once(
    new_pg_database, tmp_path
) -> None:
    port = free_port()
    redis = _redis(port, tmp_path)
    env = service_env(tmp_path, new_pg_database(), f"redis://127.0.0.1:{port}/0",
                      LSQ_SWEEP_SECONDS="1", LSQ_REPUBLISH_SECONDS="3")  # fmt: skip
    svc = Service("redis-restart", env, tmp_path)
    try:
        svc.wait_ready()
        busy = svc.submit(tiny_spec("busy", training={"epochs": 4}))  # holds the only worker
        svc.wait(busy["id"], until=lambda j: j["status"] == "running")
        waiting = [svc.submit(tiny_spec(f"waiting-{i}", training={"epochs": 1})) for i in (1, 2)]
        redis.stop(signal.SIGKILL)  # the broker and every message in it are gone
        redis = _redis(port, tmp_path)
        for job in (busy, *waiting):
            done = svc.wait(job["id"], timeout=180)
            assert done["status"] == "succeeded", (done["error"], svc.diagnostics())
            assert done["attempts"] == 1  # exactly once, though published twice
            assert [e["epoch"] for e in done["epochs"]] == list(range(1, 1 + len(done["epochs"])))
        assert "no message in the broker" in svc.worker.output()
    finally:
        svc.close()
        redis.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_retries_after_the_api_was_killed_mid_burst_make_each_job_once(tmp_path) -> None:
    """Clients submit with Idempotency-Keys, the API dies (kill -9) in the middle, comes back,
    and every client sends its request again: one job per key, each run exactly once."""
    svc = Service("api-kill", service_env(tmp_path), tmp_path)
    spec = tiny_spec("burst", dataset={"train_size": 128, "test_size": 64},
                     training={"epochs": 1})  # fmt: skip
    keys = [f"burst-{i}" for i in range(16)]

    got_one = threading.Event()

    def send(key: str) -> int | None:
        try:
            response = svc.http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            return None  # the API died under this request: the client does not know its fate
        assert response.status_code in (200, 201), response.text
        got_one.set()
        return response.json()["id"]

    def kill_after_the_first_answer() -> None:
        got_one.wait(60)  # not a fixed delay: a busy machine answers the first one late
        svc.api.stop(signal.SIGKILL)

    try:
        svc.wait_ready()
        killer = threading.Thread(target=kill_after_the_first_answer)
        killer.start()  # while the later requests are still being sent
        with ThreadPoolExecutor(4) as pool:
            first = list(pool.map(lambda k: (time.sleep(0.05 * keys.index(k)), send(k))[1], keys))
        killer.join()
        assert None in first and any(first)  # some got through, some died with the API
        svc.api = Proc(["api", "--port", str(svc.port)], svc.env, tmp_path / "api.log")
        svc.wait_ready()
        again = [send(k) for k in keys]
        assert None not in again and len(set(again)) == len(keys)
        assert all(a == b for a, b in zip(first, again, strict=True) if a is not None)
        listed = svc.http.get("/v1/jobs", params={"limit": 200}).json()["items"]
        assert sorted(j["id"] for j in listed) == sorted(again)  # no job without its key
        for job_id in again:
            done = svc.wait(job_id)
            assert done["status"] == "succeeded" and done["attempts"] == 1, done
    finally:
        svc.close()
