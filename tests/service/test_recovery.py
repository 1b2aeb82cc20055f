"""The database out of reach in the middle of a job (PostgreSQL refusing every connection to
it): the worker fences itself, does not fail the job, and resumes it when the database is back."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .conftest import Proc, Service, bearer, free_port, make_token, service_env, tiny_spec


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
