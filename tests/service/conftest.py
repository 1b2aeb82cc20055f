"""Real parts for the service tests: a PostgreSQL database per test session built by the real
migrations, Redis, and API / worker processes talking HTTP and through a real broker.

PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379) must be running; when
they are not, the tests that need them fail rather than skip. Override with LSQ_TEST_PG_URL
(a server URL, any database) and LSQ_TEST_REDIS_URL.

Under pytest-xdist each worker (gw0, gw1, ...) keeps to its own: PostgreSQL databases named
after it, a Redis database index of its own, a port range of its own, and pytest's per-worker
temporary folders.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from api.service.db import make_engine, upgrade_database
from api.service.owners import Limits

ROOT = Path(__file__).resolve().parents[2]
PG_SERVER = os.environ.get(
    "LSQ_TEST_PG_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)
# pytest-xdist's worker name ("gw0", "gw1", ...); "" in a run without workers.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
WORKER_NUMBER = int(XDIST_WORKER[2:]) if XDIST_WORKER.startswith("gw") else None


def worker_redis_url(url: str) -> str:
    """Worker gwN gets the Redis database index N + 1 past `url`'s: Celery's own keys (unacked
    messages, bindings, the workers' broadcasts) are per database, not per queue."""
    if WORKER_NUMBER is None:
        return url
    parts = urlsplit(url)
    index = int(parts.path.strip("/") or 0) + WORKER_NUMBER + 1
    return urlunsplit(parts._replace(path=f"/{index}"))


REDIS_URL = worker_redis_url(os.environ.get("LSQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
# Settings the service reads; a test's environment must not leak into the processes it starts.
SERVICE_ENV = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "LSQ_DATA_DIR",
    "LSQ_ARTIFACTS_DIR",
    "LSQ_QUEUE",
    "LSQ_URL",
    "LSQ_HEARTBEAT_SECONDS",
    "LSQ_LEASE_SECONDS",
    "LSQ_RETRY_SECONDS",
    "LSQ_VISIBILITY_TIMEOUT",
    "LSQ_DATA_ROOTS",
    "LSQ_TOKEN",
    "LSQ_ALLOWED_HOSTS",
    "LSQ_REQUESTS_PER_SECOND",
    "LSQ_REQUEST_BURST",
    "CUDA_VISIBLE_DEVICES",
    "LSQ_MLFLOW_TRACKING_URI",
)
FINISHED = ("succeeded", "failed", "cancelled")

# A job that learns well above chance (10 classes) in a second or two on a CPU.
TINY = {
    "dataset": {"name": "synthetic", "train_size": 512, "test_size": 128},
    "model": {"arch": "resnet20"},
    "training": {"epochs": 3, "batch_size": 64, "lr": 0.05},
}


def tiny_spec(name: str, **changes: Any) -> dict[str, Any]:
    """TINY with some sections replaced or extended, e.g. training={"epochs": 1}."""
    spec = {"name": name, **{k: dict(v) for k, v in TINY.items()}}
    for key, value in changes.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def pytest_configure(config: pytest.Config) -> None:
    # kombu's SQLAlchemy transport (the embedded broker) declares a relationship it never reads
    # with lazy="noload", which SQLAlchemy 2.1 deprecates; harmless for the broker.
    config.addinivalue_line("filterwarnings", "ignore:The ``noload`` loader strategy")


# ------------------------------------------------------------------------------ databases


@pytest.fixture(scope="session")
def pg_server() -> str:
    engine = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:
        pytest.fail(f"PostgreSQL is not reachable at {PG_SERVER} (CI starts it): {e}")
    finally:
        engine.dispose()
    return PG_SERVER


@pytest.fixture(scope="session")
def new_pg_database(pg_server: str) -> Iterator[Callable[[], str]]:
    """Make fresh, empty PostgreSQL databases; all are dropped at the end of the session."""
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make() -> str:
        name = f"lsq_test_{XDIST_WORKER or 'main'}_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return make_url(pg_server).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping()
    except Exception as e:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} (CI starts it): {e}")
    return REDIS_URL


@pytest.fixture(scope="module")
def pg_store_url(new_pg_database) -> str:  # noqa: ANN001
    """One migrated PostgreSQL database for this module; tests empty its tables."""
    url = new_pg_database()
    engine = make_engine(url)
    upgrade_database(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite database built by the real migrations, once per session (per xdist worker):
    each test gets a copy of the file rather than running every migration again."""
    path = tmp_path_factory.mktemp("sqlite-template") / "lsq.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade_database(engine)
    engine.dispose()
    # Out of WAL mode, the file alone is the whole database (make_engine turns WAL on again
    # for each copy).
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated database with no jobs."""
    if request.param == "postgres":
        engine = make_engine(request.getfixturevalue("pg_store_url"))
        with engine.begin() as conn:
            tables = "jobs, epochs, idempotency_keys, tokens, experiments, owners"
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    else:
        shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp_path / "lsq.db")
        engine = make_engine(f"sqlite:///{tmp_path / 'lsq.db'}")
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def quota(queued: int = 100, running: int = 0) -> Limits:
    """An owner's limits: `queued` unfinished jobs, `running` at once (0: any), and room for
    anything else."""
    return Limits(queued, running, 1e12, 1e9, 1 << 60)


# ------------------------------------------------------------------------------ processes


# Under xdist, worker gwN takes ports from a block of its own, below Linux's ephemeral range
# (32768-60999) where the kernel picks the other side's ports: two workers never pick the same
# port between one's check and its server's bind.
PORT_BLOCK = 1000
_FIRST_PORT = 20000 + PORT_BLOCK * (WORKER_NUMBER or 0)
_PORTS = itertools.cycle(range(_FIRST_PORT, _FIRST_PORT + PORT_BLOCK))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    if WORKER_NUMBER is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for port in itertools.islice(_PORTS, PORT_BLOCK):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use, or still in TIME_WAIT
                continue
            return port
    raise RuntimeError(f"no free port in {_FIRST_PORT}-{_FIRST_PORT + PORT_BLOCK - 1}")


def service_env(
    data_dir: Path, database_url: str | None = None, broker_url: str | None = None, **extra: str
) -> dict[str, str]:
    """The environment of a service process: embedded defaults unless URLs are given."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    env |= {
        "LSQ_DATA_DIR": str(data_dir),
        "LSQ_QUEUE": f"lsq-test-{uuid.uuid4().hex[:8]}",  # runs sharing a Redis stay apart
        # Short beats so a cancel lands within a second and an expired lease is seconds away.
        "LSQ_HEARTBEAT_SECONDS": "0.3",
        "LSQ_LEASE_SECONDS": "5",
        "LSQ_RETRY_SECONDS": "1",
        "LSQ_DATA_ROOTS": str(data_dir / "datasets"),
        # Tests poll hard with one token; test_security checks the limits themselves.
        "LSQ_REQUESTS_PER_SECOND": "1000",
        "LSQ_REQUEST_BURST": "1000",
        "PYTHONUNBUFFERED": "1",
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    return env | extra


CLI = (sys.executable, "-m", "worker.cli")


def make_token(env: dict[str, str], owner: str = "tester") -> str:
    """A new API token for `owner`, made with `lsq token create` on the service's database."""
    done = subprocess.run(
        [*CLI, "token", "create", owner], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


def job_folder_name(data_dir: Path, job_id: int) -> str:
    """The folder name of an embedded service's job (its files: artifacts/jobs/<name>)."""
    with sqlite3.connect(data_dir / "lsq.db") as db:
        return db.execute("SELECT folder FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Proc:
    """A process (by default `python -m worker.cli ARGS`) with its output in a log file."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, program: tuple[str, ...] = CLI
    ) -> None:
        self.log = log
        self._file = log.open("ab")
        self.popen = subprocess.Popen(
            [*program, *args],
            env=env,
            cwd=ROOT,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._file.close()
        return self.popen.returncode


class Service:
    """An API process and a worker process sharing one database, broker and artifacts folder."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name, self.env, self.logs = name, env, logs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.api = Proc(["api", "--port", str(self.port)], env, logs / "api.log")
        self.worker = self.start_worker()

    def start_worker(self) -> Proc:
        return Proc(["worker"], self.env, self.logs / "worker.log")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in (self.api, self.worker):
                assert proc.alive(), f"{proc.log.name} exited:\n{proc.output()[-4000:]}"
            try:
                if self.http.get("/readyz").status_code == 200 and "ready" in self.worker.output():
                    self.token = make_token(self.env)
                    self.http.headers.update(bearer(self.token))
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.name} not ready in {timeout} s:\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-3000:]}" for p in (self.api, self.worker))

    # -- HTTP helpers

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(
        self,
        job_id: int,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 120,
    ) -> dict[str, Any]:
        """Poll a job until `until(job)` (default: it ended); fail with the logs on timeout."""
        until = until or (lambda job: job["status"] in FINISHED)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline or not self.worker.alive():
                raise AssertionError(
                    f"job {job_id} stuck at {job['status']} {job['progress']}:\n"
                    + self.diagnostics()
                )
            time.sleep(0.2)

    def close(self) -> None:
        self.http.close()
        worker, api = self.worker.stop(), self.api.stop()
        # A clean stop is part of the contract: the worker's warm shutdown exits 0; uvicorn
        # shuts down gracefully, then re-raises the SIGTERM it caught.
        assert worker == 0 and api in (0, -signal.SIGTERM), f"{worker} {api}\n{self.diagnostics()}"
        assert "Application shutdown complete" in self.api.output()


@contextlib.contextmanager
def embedded_service(
    tmp_path_factory: pytest.TempPathFactory, name: str, **settings: str
) -> Iterator[Service]:
    """The service on embedded defaults (SQLite + SQLite broker) alone, for a module's tests,
    with these settings (LSQ_...) besides."""
    data = tmp_path_factory.mktemp(name)
    svc = Service(name, service_env(data, **settings), data)
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def service(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    """The service on embedded defaults (SQLite + SQLite broker) or on PostgreSQL + Redis."""
    backend = request.param
    data = tmp_path_factory.mktemp(f"service-{backend}")
    if backend == "postgres":
        database = request.getfixturevalue("new_pg_database")()
        env = service_env(data, database, request.getfixturevalue("redis_url"))
    else:
        env = service_env(data)
    svc = Service(backend, env, data)
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.close()
        if backend == "postgres":  # the queue and its binding: messages left to watch jobs
            client = redis.Redis.from_url(env["CELERY_BROKER_URL"])
            for key in client.scan_iter(f"*{env['LSQ_QUEUE']}*"):
                client.delete(key)
