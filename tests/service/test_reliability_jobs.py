"""A cancelled job never ends `succeeded`: a cancel during the evaluation stops it there, and
a run that finished before it saw the flag still ends cancelled. A job shows its worker by an
opaque name, not by host and pid."""

from __future__ import annotations

import re

import pytest

from api.service.job_spec import ServiceJobSpec
from api.service.models import JobStatus
from api.service.store import jobs as job_store
from api.service.store import worker as worker_store
from api.web.schemas import public_worker
from lsq.metrics import RunResult

from .conftest import Service, quota, tiny_spec

pytestmark = pytest.mark.timeout(600)


def test_a_job_cancelled_during_its_evaluation_ends_cancelled(service: Service) -> None:
    # One training batch, then an evaluation of 20000 images: seconds long on a CPU.
    spec = tiny_spec("long-eval", dataset={"train_size": 64, "test_size": 20_000},
                     training={"epochs": 1})  # fmt: skip
    job = service.submit(spec)
    trained = lambda j: j["status"] == "running" and j["progress"]["fraction"] == 1.0  # noqa: E731
    job = service.wait(job["id"], until=trained)
    assert job["epochs"] == []  # its only epoch is still being evaluated
    response = service.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    job = service.wait(job["id"])
    assert job["status"] == "cancelled" and job["result"] is None, job
    files = [a["name"] for a in service.http.get(f"/v1/jobs/{job['id']}/artifacts").json()]
    assert "model.pt" not in files and job["epochs"] == []  # stopped inside the evaluation


def worker_of(service: Service, job_id: int, attempt: int = 1) -> str:
    """The full name of the worker that made that attempt at `job_id`, as its log says."""
    log = service.worker.output()
    return re.findall(rf"job {job_id}: attempt {attempt} on (\S+)", log)[0]


@pytest.mark.slow
def test_a_job_shows_its_worker_by_an_opaque_name_stable_per_worker(service: Service) -> None:
    jobs = [service.submit(tiny_spec(f"who-{i}", training={"epochs": 1})) for i in range(2)]
    first, second = (service.wait(job["id"]) for job in jobs)
    assert first["status"] == second["status"] == "succeeded"
    # The worker logs its full name (host:pid:...); the API shows a digest of it, the same for
    # both jobs of that one process.
    [name] = {worker_of(service, first["id"]), worker_of(service, second["id"])}
    assert name.split(":")[1] == str(service.worker.pid)
    assert first["worker"] == second["worker"] == public_worker(name)
    assert re.fullmatch(r"[0-9a-f]{12}", first["worker"])
    listed = service.http.get("/v1/jobs", params={"limit": 2}).json()["items"]
    assert {j["worker"] for j in listed} == {public_worker(name)}


RESULT = RunResult(final_top1=1, final_top5=5, best_top1=1, best_top5=5, best_epoch=1, epochs=1)


def test_a_run_that_ended_before_it_saw_its_cancel_ends_cancelled(db) -> None:
    with db.begin() as session:
        spec = ServiceJobSpec.model_validate(tiny_spec("late"))
        job_id = job_store.submit_job(session, "ann", spec, limits=quota(10))[0].id
    with db.begin() as session:
        assert worker_store.claim_job(session, job_id, "w1", lease_seconds=60).outcome == "claimed"
    with db.begin() as session:
        job_store.cancel_job(session, job_id, "ann")  # after the run's last look at the flag
    with db.begin() as session:
        assert worker_store.finish_job(session, job_id, "w1", JobStatus.succeeded, result=RESULT)
    with db.begin() as session:
        job = job_store.get_job(session, job_id)
        assert (job.status, job.result, job.cancel_requested) == (JobStatus.cancelled, None, True)
