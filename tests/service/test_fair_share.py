"""Owners share the service fairly: dispatch takes turns between owners, and each owner's
limits (jobs queued and running, compute and time per job, storage) hold, also when two
requests race. Store rules on SQLite and PostgreSQL; then real API and worker processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.service import dispatch, owners
from api.service.errors import TooManyJobs
from api.service.job_spec import ServiceJobSpec
from api.service.models import Job, JobStatus
from api.service.owners import Limits
from api.service.store import jobs as job_store
from api.service.store import worker as worker_store
from lsq.cost import TRAINING_PASSES, network_macs

from .conftest import (
    CLI,
    FINISHED,
    ROOT,
    Service,
    bearer,
    make_token,
    quota,
    service_env,
    tiny_spec,
)
from .test_security import Api

WORKER = "w1"


def submit(db: sessionmaker[Session], owner: str, name: str, **defaults: Any) -> int:
    spec = ServiceJobSpec.model_validate(tiny_spec(name))
    with db.begin() as session:
        return job_store.submit_job(session, owner, spec, limits=quota(**defaults))[0].id


def next_job(db: sessionmaker[Session], defaults: Limits | None = None) -> int | None:
    with db.begin() as session:
        job = dispatch.claim_next(session, WORKER, 60, 5, defaults or quota())
        return job.id if job else None


def finish(db: sessionmaker[Session], job_id: int) -> None:
    with db.begin() as session:
        assert worker_store.finish_job(
            session, job_id, WORKER, JobStatus.succeeded, stored_bytes=10
        )


# ------------------------------------------------------------------------------- the store


def test_a_free_worker_takes_turns_between_owners(db: sessionmaker[Session]) -> None:
    flood = [submit(db, "flood", f"f{i}") for i in range(5)]
    polite = [submit(db, "polite", f"p{i}") for i in range(2)]
    order = []
    while (job_id := next_job(db)) is not None:
        order.append(job_id)
        finish(db, job_id)
    # "flood" < "polite" breaks the first tie; then the owner whose last start is oldest
    assert order == [flood[0], polite[0], flood[1], polite[1], *flood[2:]]


def test_an_owner_at_its_running_limit_waits_while_others_run(db: sessionmaker[Session]) -> None:
    first, second = submit(db, "flood", "f1"), submit(db, "flood", "f2")
    one_at_a_time = quota(running=1)
    assert next_job(db, one_at_a_time) == first
    assert next_job(db, one_at_a_time) is None  # flood runs its one; nobody else waits
    other = submit(db, "polite", "p1")
    assert next_job(db, one_at_a_time) == other
    finish(db, first)
    assert next_job(db, one_at_a_time) == second
    with db.begin() as session:  # an operator's own limit for one owner
        owners.lock(session, "polite").max_running = 2
    more = submit(db, "polite", "p2")
    assert next_job(db, one_at_a_time) == more  # polite's second, flood still at its one


def test_a_job_waiting_for_another_jobs_model_lets_the_next_one_run(
    db: sessionmaker[Session],
) -> None:
    source = submit(db, "ann", "source")
    spec = ServiceJobSpec.model_validate(tiny_spec("student", model={"init": {"job": source}}))
    with db.begin() as session:
        student = job_store.submit_job(session, "ann", spec, limits=quota())[0].id
    assert next_job(db) == source
    assert next_job(db) is None  # the student waits for its source's model
    finish(db, source)
    assert next_job(db) == student


def test_the_queue_limit_holds_when_two_submissions_race(db: sessionmaker[Session]) -> None:
    """The second submission counts the first's job though it has not committed yet: the
    owner's lock makes it wait for the first."""
    spec = ServiceJobSpec.model_validate(tiny_spec("racer"))
    inside, outcomes = threading.Event(), []
    with db.begin() as session:  # the owner is known: its row exists
        owners.lock(session, "ann")

    def first() -> None:
        with db.begin() as session:
            job_store.submit_job(session, "ann", spec, limits=quota(queued=1))
            inside.set()
            time.sleep(1.0)  # the second starts its count meanwhile
        outcomes.append("first")

    def second() -> None:
        inside.wait(10)
        try:
            with db.begin() as session:
                job_store.submit_job(session, "ann", spec, limits=quota(queued=1))
            outcomes.append("second")
        except TooManyJobs:
            outcomes.append("refused")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["first", "refused"]


# ------------------------------------------------------------------------------- processes


def set_limits(env: dict[str, str], owner: str, **values: object) -> None:
    """`lsq owner limits OWNER --max-... N`, as an operator runs it."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    done = subprocess.run(
        [*CLI, "owner", "limits", owner, *options], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def client(service: Service, owner: str) -> httpx.Client:
    token = make_token(service.env, owner)
    return httpx.Client(base_url=service.url, headers=bearer(token), timeout=30)


def wait(http: httpx.Client, job_id: int, timeout: float = 180) -> dict[str, Any]:
    """Poll one of `http`'s owner's jobs until it ends."""
    deadline = time.monotonic() + timeout
    while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] not in FINISHED:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def started(job: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(job["started_at"])


@pytest.mark.slow
def test_a_polite_owner_waits_behind_one_job_of_a_flood(service: Service) -> None:
    quick = {"training": {"epochs": 1}, "dataset": {"train_size": 256, "test_size": 64}}
    with client(service, "flood") as flood, client(service, "polite") as polite:
        flooded = [flood.post("/v1/jobs", json=tiny_spec(f"f{i}", **quick)) for i in range(6)]
        assert {r.status_code for r in flooded} == {201}
        mine = polite.post("/v1/jobs", json=tiny_spec("mine", **quick)).json()
        ended = wait(polite, mine["id"])
        assert ended["status"] == "succeeded", ended["error"]
        submitted_at = datetime.fromisoformat(mine["created_at"])
        ahead = [
            job
            for r in flooded
            if (job := flood.get(f"/v1/jobs/{r.json()['id']}").json())["started_at"]
            and submitted_at < started(job) < started(ended)
        ]
        assert len(ahead) <= 1, [j["id"] for j in ahead]  # one worker: one job at most
        for r in flooded:
            wait(flood, r.json()["id"])


@pytest.mark.slow
def test_a_job_past_its_owners_time_limit_fails_and_keeps_its_checkpoint(
    service: Service,
) -> None:
    set_limits(service.env, "slow", max_job_seconds=15)
    short_epochs = {"train_size": 128, "test_size": 32}
    with client(service, "slow") as slow:
        spec = tiny_spec("long", training={"epochs": 500}, dataset=short_epochs)
        job = slow.post("/v1/jobs", json=spec).json()
        ended = wait(slow, job["id"])
        assert ended["status"] == "failed"
        assert ended["error"].startswith("time limit: it ran 15 s"), ended["error"]
        assert 1 <= len(ended["epochs"]) < 500
        names = [a["name"] for a in slow.get(f"/v1/jobs/{job['id']}/artifacts").json()]
        assert "checkpoint.pt" in names


@pytest.mark.slow
def test_compute_and_storage_limits_are_shown_and_hold(service: Service) -> None:
    set_limits(service.env, "frugal", max_job_tmacs=0.05, max_storage_bytes=1)
    spec = tiny_spec("small", training={"epochs": 1})
    with client(service, "frugal") as frugal:
        me = frugal.get("/v1/me").json()
        assert me["owner"] == "frugal"
        assert me["limits"]["max_job_tmacs"] == 0.05 and me["limits"]["max_storage_bytes"] == 1
        too_long = frugal.post("/v1/jobs", json=tiny_spec("big", training={"epochs": 1000}))
        assert too_long.status_code == 422, too_long.text
        assert too_long.json()["error"]["fields"][0]["field"] == "training.epochs"
        assert "LSQ_MAX_JOB_TMACS" in too_long.text
        first, second = (frugal.post("/v1/jobs", json=spec) for _ in range(2))  # 0 bytes yet
        assert (first.status_code, second.status_code) == (201, 201), second.text
        job = first.json()
        # 512 training images (3 passes) and 128 test images of 16 x 16, one epoch
        per_image = network_macs("resnet20", 16, 3, 10)
        assert job["compute_tmacs"] == pytest.approx((3 * 512 + 128) * per_image / 1e12)
        assert TRAINING_PASSES == 3
        ended = wait(frugal, job["id"])
        assert ended["status"] == "succeeded", ended["error"]
        files = sum(a["size"] for a in frugal.get(f"/v1/jobs/{job['id']}/artifacts").json())
        assert ended["stored_bytes"] >= files > 0
        # the second starts after the first has filled the owner's storage: it fails at once
        refused = wait(frugal, second.json()["id"])
        assert refused["status"] == "failed" and "LSQ_MAX_STORAGE_BYTES" in refused["error"]
        assert refused["epochs"] == [] and refused["stored_bytes"] == 0
        me = frugal.get("/v1/me").json()
        assert me["usage"] == {"queued": 0, "running": 0, "storage_bytes": ended["stored_bytes"]}
        full = frugal.post("/v1/jobs", json=spec)
        assert full.status_code == 507, full.text
        assert "delete jobs" in full.json()["error"]["message"]


def test_a_batch_too_large_for_a_device_is_refused(service: Service) -> None:
    huge = tiny_spec(
        "huge", model={"arch": "resnet50"}, dataset={"image_size": 256, "train_size": 4096},
        training={"batch_size": 4096, "epochs": 1},
    )  # fmt: skip
    response = service.http.post("/v1/jobs", json=huge)
    assert response.status_code == 422, response.text
    [field] = response.json()["error"]["fields"]
    assert field["field"] == "training.batch_size" and "LSQ_MAX_BATCH_BYTES" in field["message"]


def test_a_cpu_worker_refuses_a_batch_its_host_cannot_hold(service: Service) -> None:
    """Split over 8 GPUs the batch fits each (about 11 GiB); on this GPU-less worker its 8
    processes would share one host's memory (about 85 GiB): the job fails before it starts."""
    spec = tiny_spec(
        "wide", model={"arch": "resnet50"}, dataset={"image_size": 224, "train_size": 64},
        training={"batch_size": 1024, "devices": 8, "epochs": 1},
    )  # fmt: skip
    job = service.submit(spec)
    ended = service.wait(job["id"])
    assert ended["status"] == "failed" and "on this CPU worker's host" in ended["error"]
    assert "LSQ_MAX_BATCH_BYTES" in ended["error"] and ended["epochs"] == []


@pytest.fixture(scope="module")
def pg_api(tmp_path_factory: pytest.TempPathFactory, new_pg_database) -> Any:  # noqa: ANN001
    data = tmp_path_factory.mktemp("race")
    (data / "datasets").mkdir()
    server = Api(data, DATABASE_URL=new_pg_database(), LSQ_MAX_QUEUED_PER_OWNER="1")
    yield server
    server.proc.stop()


def test_one_unfinished_job_means_one_when_submissions_race_on_postgres(pg_api: Api) -> None:
    with pg_api.client("racer") as racer, ThreadPoolExecutor(2) as pool:
        for round_ in range(10):
            specs = [tiny_spec(f"{round_}-{i}") for i in range(2)]
            answers = list(pool.map(lambda spec: racer.post("/v1/jobs", json=spec), specs))
            assert sorted(a.status_code for a in answers) == [201, 429], round_
            created = next(a.json() for a in answers if a.status_code == 201)
            assert racer.post(f"/v1/jobs/{created['id']}/cancel").status_code == 200


def test_no_job_runs_twice_when_two_workers_choose_at_once(db: sessionmaker[Session]) -> None:
    jobs = {submit(db, owner, f"{owner}{i}") for owner in ("a", "b", "c") for i in range(4)}
    with ThreadPoolExecutor(4) as pool:
        picked = [j for j in pool.map(lambda _: next_job(db), range(12)) if j is not None]
    # a worker that finds every owner being chosen for by others finds nothing this time
    while (job_id := next_job(db)) is not None:
        picked.append(job_id)
    assert sorted(picked) == sorted(jobs)  # each once
    with db.begin() as session:
        assert all(j.status == JobStatus.running for j in session.query(Job))


# What a worker does with a message (worker.runner), in a process of its own on the embedded
# broker: the job a message names keeps a message when another job takes its turn, and the
# time limit counts the seconds earlier attempts ran.
TURNS = """
import sys
from api.service.store import jobs as job_store
from api.service.config import get_settings
from api.service.db import session_scope, upgrade_database
from api.service.owners import Limits
from api.service.queue import queue_length
from api.service.job_spec import ServiceJobSpec
from worker import runner

upgrade_database()
spec = ServiceJobSpec.model_validate({"name": "x", "dataset": {"name": "synthetic"},
                                      "model": {"arch": "resnet20"}})
limits = Limits.defaults(get_settings())
with session_scope() as session:
    named = job_store.submit_job(session, "zed", spec, limits=limits)[0].id
    fairer = job_store.submit_job(session, "amy", spec, limits=limits)[0].id  # 'amy' < 'zed'
claimed = runner.claim(named)
assert claimed.job_id == fairer, claimed
assert queue_length() == 1, queue_length()  # a new message for the job the first one named
with session_scope() as session:
    assert job_store.get_job(session, named).published_at is not None
    job_store.get_job(session, fairer).run_seconds = 7.0  # as if an earlier attempt ran 7 s
assert runner.claim(fairer).job_id == named  # a running job's message: a turn for another
waits = runner.claim(fairer)  # nothing else to run, and its lease is alive: it waits
assert isinstance(waits, runner.RetryLater) and "lease" in waits.why, waits
assert queue_length() == 1  # no message for a job that runs
keeper = runner.LeaseKeeper(fairer, "w", get_settings(), runner.Claimed(
    fairer, 2, "f", {}, {}, None, run_seconds=7.0, limit_seconds=7.5))
assert not keeper.should_stop()
import time; time.sleep(0.6)
assert keeper.should_stop() and keeper.stop_reason == runner.Stop.time_limit
print("ok")
"""


def test_a_message_whose_turn_went_to_another_job_leaves_its_job_a_new_one(tmp_path) -> None:
    env = service_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", TURNS], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
