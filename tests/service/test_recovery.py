"""The database out of reach in the middle of a job (PostgreSQL refusing every connection to
it): the worker fences itself, does not fail the job, and resumes it when the database is back."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .conftest import Service, service_env, tiny_spec


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
