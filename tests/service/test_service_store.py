"""The store's rules, on SQLite and PostgreSQL databases built by the real migrations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, inspect, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from api.service.db import make_engine, upgrade_database
from api.service.errors import InvalidField, JobConflict, JobNotFound, TooManyJobs
from api.service.experiments.plan import FromCheckpoint, FromJob, Plan, Variant
from api.service.job_spec import ServiceJobSpec
from api.service.models import Base, Epoch, Experiment, Job, JobStatus, utcnow
from api.service.store import epochs as epoch_store
from api.service.store import experiments as experiment_store
from api.service.store import jobs as job_store
from api.service.store import worker as worker_store
from api.web.schemas import ExperimentOut, JobDetail, JobOut
from lsq.levels import from_bits
from lsq.metrics import EpochMetrics, RunResult

from .conftest import ROOT, quota, service_env, tiny_spec

HEAD = "0013"  # the newest migration in migrations/versions

METRICS = {
    "epoch": 1,
    "train_loss": 1.0,
    "train_top1": 50.0,
    "test_loss": 1.1,
    "test_top1": 40.0,
    "test_top5": 90.0,
    "lr": 0.1,
    "seconds": 1.5,
    "images_per_second": 300.0,
}


RESULT = RunResult(final_top1=1, final_top5=5, best_top1=1, best_top5=5, best_epoch=1, epochs=1)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database."""
    if request.param == "postgres":
        return request.getfixturevalue("new_pg_database")()
    return f"sqlite:///{tmp_path / 'lsq.db'}"


OWNER = "ann"


def create(session: Session, spec: ServiceJobSpec, owner: str = OWNER) -> Job:
    return job_store.submit_job(session, owner, spec, limits=quota(1000))[0]


def add_job(db: sessionmaker[Session], **changes: object) -> int:
    with db.begin() as session:
        return create(session, ServiceJobSpec.model_validate(tiny_spec("j", **changes))).id


def claim(db: sessionmaker[Session], job_id: int, worker: str) -> worker_store.Claim:
    with db.begin() as session:
        return worker_store.claim_job(session, job_id, worker, lease_seconds=60)


def expire_lease(db: sessionmaker[Session], job_id: int) -> None:
    """What a worker that stopped renewing its lease looks like, minutes later."""
    with db.begin() as session:
        past = utcnow() - timedelta(seconds=1)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=past))


def test_a_job_is_claimed_once_and_taken_over_only_when_its_lease_expired(db) -> None:
    job_id = add_job(db)
    first = claim(db, job_id, "w1")
    assert first.outcome == "claimed" and first.job.attempts == 1
    second = claim(db, job_id, "w2")
    assert second.outcome == "busy" and second.retry_at > utcnow()

    expire_lease(db, job_id)
    taken = claim(db, job_id, "w2")
    assert taken.outcome == "claimed" and taken.job.attempts == 2 and taken.job.worker == "w2"
    assert taken.job.started_at == first.job.started_at
    with db.begin() as session:  # the old owner can no longer write anything
        assert not worker_store.record_epoch(session, job_id, "w1", EpochMetrics(**METRICS))
        assert not worker_store.renew_lease(session, job_id, "w1", 60).held
        assert not worker_store.finish_job(session, job_id, "w1", JobStatus.succeeded)
        assert worker_store.finish_job(session, job_id, "w2", JobStatus.failed, error="boom")
    assert claim(db, job_id, "w3").outcome == "finished"
    with db.begin() as session:
        job = job_store.get_job(session, job_id)
        assert (job.status, job.error, job.lease_expires_at) == (JobStatus.failed, "boom", None)
    assert claim(db, 999999, "w1").outcome == "missing"


def test_an_epoch_is_recorded_once_per_job_and_number(db) -> None:
    job_id = add_job(db)
    claim(db, job_id, "w1")
    with db.begin() as session:
        assert worker_store.record_epoch(session, job_id, "w1", EpochMetrics(**METRICS))
        assert worker_store.record_epoch(
            session, job_id, "w1", EpochMetrics(**{**METRICS, "epoch": 2})
        )
    with db.begin() as session:  # written again, e.g. after a resume: replaced, not doubled
        assert worker_store.record_epoch(
            session, job_id, "w1", EpochMetrics(**{**METRICS, "test_top1": 41})
        )
    with db.begin() as session:
        epochs = epoch_store.list_epochs(session, job_id, OWNER)
        assert [(e.epoch, e.test_top1) for e in epochs] == [(1, 41.0), (2, 40.0)]
        assert session.scalar(select(func.count()).select_from(Epoch)) == 2
        job = job_store.get_job(session, job_id)
        assert (job.progress_epoch, job.progress_fraction) == (2, 1.0)


def test_cancel_stops_a_queued_job_at_once_and_flags_a_running_one(db) -> None:
    queued, running = add_job(db), add_job(db)
    claim(db, running, "w1")
    with db.begin() as session:
        assert job_store.cancel_job(session, queued, OWNER).status == JobStatus.cancelled
        job = job_store.cancel_job(session, running, OWNER)
        assert job.status == JobStatus.running and job.cancel_requested
    assert claim(db, queued, "w1").outcome == "finished"  # a queued job never starts
    with db.begin() as session:
        assert worker_store.renew_lease(session, running, "w1", 60).cancel_requested
        assert worker_store.finish_job(session, running, "w1", JobStatus.cancelled)
    with db.begin() as session:
        assert (
            job_store.cancel_job(session, running, OWNER).status == JobStatus.cancelled
        )  # idempotent


def test_cancelling_a_finished_job_is_a_conflict(db) -> None:
    job_id = add_job(db)
    claim(db, job_id, "w1")
    with db.begin() as session:
        worker_store.finish_job(session, job_id, "w1", JobStatus.succeeded, result=RESULT)
    with db.begin() as session, pytest.raises(JobConflict, match="already succeeded"):
        job_store.cancel_job(session, job_id, OWNER)
    with db.begin() as session, pytest.raises(JobNotFound):
        job_store.cancel_job(session, 999999, OWNER)


def test_a_job_whose_worker_died_after_a_cancel_ends_cancelled(db) -> None:
    job_id = add_job(db)
    claim(db, job_id, "w1")
    with db.begin() as session:
        job_store.cancel_job(session, job_id, OWNER)
    expire_lease(db, job_id)
    assert claim(db, job_id, "w2").outcome == "finished"
    with db.begin() as session:
        assert job_store.get_job(session, job_id).status == JobStatus.cancelled


def test_a_released_job_is_queued_again_for_another_worker(db) -> None:
    job_id = add_job(db)
    claim(db, job_id, "w1")
    with db.begin() as session:
        assert worker_store.release_job(session, job_id, "w1")
        assert [j.id for j in worker_store.unfinished_jobs(session)] == [job_id]
    resumed = claim(db, job_id, "w2")
    assert resumed.outcome == "claimed" and resumed.job.attempts == 2


def test_model_init_may_name_a_job_that_can_still_succeed(db) -> None:
    source = add_job(db)
    add_job(db, model={"init": {"job": source}})  # queued source: accepted, the worker waits
    claim(db, source, "w1")
    with db.begin() as session:
        worker_store.finish_job(session, source, "w1", JobStatus.failed, error="boom")
    for ref, message in [(source, "ended failed"), (999999, "does not exist")]:
        with pytest.raises(InvalidField, match=message) as e:
            add_job(db, model={"init": {"job": ref}})
        assert e.value.field == "model.init.job"
    fits = add_job(db)  # its model's layers fit only the same network on the same data
    for change, message in [
        ({"model": {"arch": "resnet32", "init": {"job": fits}}}, "is a resnet20, not"),
        ({"model": {"init": {"job": fits}}, "dataset": {"name": "cifar10"}}, "on synthetic, not"),
    ]:
        with pytest.raises(InvalidField, match=message) as e:
            add_job(db, **change)
        assert e.value.field == "model.init.job"


def test_an_experiments_baseline_job_is_a_full_precision_one(db) -> None:
    """A quantized job's row would read `full precision (job N)`, with its float weights'
    accuracy: refused, with the reason."""
    float_job, ternary = add_job(db), add_job(db, quantization={"weight": [-1, 0, 1]})
    for job_id in (float_job, ternary):
        claim(db, job_id, "w1")
        with db.begin() as session:
            worker_store.finish_job(session, job_id, "w1", JobStatus.succeeded, result=RESULT)
    variant = ServiceJobSpec.model_validate(tiny_spec("v", quantization={"weight": [-1, 0, 1]}))

    def experiment(baseline_job: int) -> Experiment:
        plan = Plan(FromJob(baseline_job), [Variant("variants.0", 0, None, [variant])])
        with db.begin() as session:
            return experiment_store.create_experiment(
                session, OWNER, "e", {"name": "e"}, plan, limits=quota(10)
            )[0]

    assert experiment(float_job).id
    with pytest.raises(InvalidField, match=f"job {ternary} is quantized") as e:
        experiment(ternary)
    assert e.value.field == "baseline.job"


def test_pages_stay_correct_while_jobs_are_added(db) -> None:
    ids = [add_job(db) for _ in range(5)]
    with db.begin() as session:
        page, cursor = job_store.list_jobs(session, OWNER, limit=2)
    assert [j.id for j in page] == ids[:-3:-1]
    new = add_job(db)
    seen = [j.id for j in page]
    while cursor:
        with db.begin() as session:
            page, cursor = job_store.list_jobs(session, OWNER, limit=2, cursor=cursor)
        seen += [j.id for j in page]
    assert seen == ids[::-1] and new not in seen
    with db.begin() as session:
        assert job_store.list_jobs(session, OWNER, status=JobStatus.running)[0] == []
        with pytest.raises(InvalidField):
            job_store.list_jobs(session, OWNER, cursor="1; drop table jobs")


def test_the_schema_comes_from_the_migrations(db) -> None:
    engine: Engine = db.kw["bind"]
    names = set(inspect(engine).get_table_names())
    assert {"jobs", "epochs", "alembic_version"} <= names
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    assert "published_at" in {c["name"] for c in inspect(engine).get_columns("jobs")}


def test_the_models_match_the_migrated_schema(db) -> None:
    """A table or column (say, a new EpochMetrics field) added without a migration fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.kw["bind"].connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


# Each process waits until the same instant, then upgrades: the migrations really overlap.
UPGRADE_AT = """
import sys, time
from api.service.db import make_engine, upgrade_database
engine = make_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
upgrade_database(engine)
"""


@pytest.mark.timeout(120)
def test_migrations_run_safely_when_several_processes_start_at_once(database_url: str) -> None:
    """Every API and worker process upgrades the schema at start; they may start together."""
    at = str(time.time() + 4)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADE_AT, database_url, at],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=100)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(outputs)
    engine = make_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
    engine.dispose()


def test_lsq_db_upgrade(database_url: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "db", "upgrade"],
        cwd=ROOT,
        env=service_env(tmp_path, database_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "latest revision" in done.stdout
    assert inspect(make_engine(database_url)).has_table("epochs")


def test_a_lease_shorter_than_three_heartbeats_is_refused(monkeypatch) -> None:
    from api.service.config import Settings

    monkeypatch.setenv("LSQ_HEARTBEAT_SECONDS", "2")
    monkeypatch.setenv("LSQ_LEASE_SECONDS", "5")
    with pytest.raises(ValueError, match="LSQ_LEASE_SECONDS must be at least 3 x"):
        Settings()
    monkeypatch.setenv("LSQ_LEASE_SECONDS", "6")
    assert Settings().lease_seconds == 6


def test_torch_threads_come_from_lsq_torch_threads_then_omp_num_threads(monkeypatch) -> None:
    from api.service.config import Settings

    monkeypatch.delenv("LSQ_TORCH_THREADS", raising=False)
    monkeypatch.setenv("LSQ_WORKERS_PER_HOST", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert Settings().cpu_threads == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert Settings().cpu_threads == 3
    monkeypatch.setenv("LSQ_TORCH_THREADS", "5")
    assert Settings().cpu_threads == 5


def test_unpublished_queued_jobs_are_found_for_the_sweep(db) -> None:
    spec = ServiceJobSpec.model_validate(tiny_spec("sweep"))
    with db.begin() as session:
        a, b = create(session, spec).id, create(session, spec).id
    later = utcnow() + timedelta(seconds=1)
    with db.begin() as session:
        assert worker_store.unpublished_jobs(session, older_than=later) == [a, b]
        assert (
            worker_store.unpublished_jobs(session, older_than=utcnow() - timedelta(hours=1)) == []
        )
        worker_store.mark_published(session, [a])
    with db.begin() as session:
        assert worker_store.unpublished_jobs(session, older_than=later) == [b]


# A spec exactly as this version of the service stores it (spec_version 1). Later versions of
# lsq.spec must keep it readable: upgrade it (lsq.spec.UPGRADES), never reject it.
STORED_V1 = json.loads((Path(__file__).parent / "fixtures" / "spec-v1.json").read_text())
# Optional fields added since, without a version bump (a stored spec stays valid): a stored
# spec runs with their defaults.
ADDED_SINCE_V1 = {
    "dataset": {"image_size": None},
    "quantization": {
        "layers": {},
        "activation_init": "lsq",
        "weight_init": "lsq",
        "activation_offset": False,
    },
    "training": {
        "compile": "auto",
        "distill": None,
        "bn_reestimate": 0,  # version 2's default is 100: the upgrade keeps version 1's none
        "step_lr_scale": 1.0,
        "warmup_epochs": 0.0,
    },
}
ADDED_TOP_LEVEL_SINCE_V1 = {"sensitivity": None}


def test_a_spec_stored_at_version_1_stays_readable_and_runnable(db) -> None:
    with db.begin() as session:
        old = Job(
            owner=OWNER, name="stored-v1", spec=STORED_V1, spec_version=1, status=JobStatus.queued
        )
        session.add(old)
        session.flush()
        job_id = old.id
    with db.begin() as session:
        job = job_store.get_job(session, job_id, with_epochs=True)
        upgraded = {**STORED_V1, "training": {**STORED_V1["training"], "bn_reestimate": 0}}
        assert JobDetail.of(job).spec == upgraded  # what GET /v1/jobs/{id} returns
        spec = ServiceJobSpec.model_validate(job_store.stored_spec(job))  # what the worker runs
        added = {k: {**STORED_V1[k], **v} for k, v in ADDED_SINCE_V1.items()}
        assert spec.model_dump(mode="json") == {**STORED_V1, **added, **ADDED_TOP_LEVEL_SINCE_V1}
        assert spec.quantization.first_last == from_bits(8, signed=True)


def test_an_experiment_stored_at_version_1_reads_as_it_ran(db) -> None:
    """Its base lacked bn_reestimate and its jobs ran without: read back, the base says 0, so
    the request submitted again plans the same jobs."""
    base = {k: v for k, v in STORED_V1.items() if k != "name"}
    request = {"name": "e", "base": base, "baseline": {"train": True}, "grid": {}}
    with db.begin() as session:
        old = Experiment(owner=OWNER, name="e", spec=request, spec_version=1)
        new = Experiment(owner=OWNER, name="e", spec=request)
        session.add_all([old, new])
        session.flush()
        shown = ExperimentOut.of(old, rows=[]).spec
        assert shown["base"]["training"] == {**base["training"], "bn_reestimate": 0}
        assert {**shown, "base": base} == request
        assert ExperimentOut.of(new, rows=[]).spec == request  # version 2: as submitted


def test_a_stored_spec_the_current_model_would_reject_is_still_returned(db) -> None:
    """Reads never re-validate: a job stored under other rules is shown, never a 500."""
    odd = {**STORED_V1, "training": {**STORED_V1["training"], "epochs": 10**6}, "extra": 1}
    with db.begin() as session:
        session.add(Job(owner=OWNER, name="odd", spec=odd, spec_version=1, status=JobStatus.failed))
    with db.begin() as session:
        (job,), _ = job_store.list_jobs(session, OWNER)
        out = JobOut.of(job)
        upgraded = {**odd, "training": {**odd["training"], "bn_reestimate": 0}}  # not validated
        assert out.spec == upgraded and out.progress.epochs == 10**6


def test_another_owners_job_is_as_missing_as_a_job_that_never_was(db) -> None:
    job_id = add_job(db)
    with db.begin() as session:
        assert job_store.get_job(session, job_id, owner=OWNER).id == job_id
        for call in (
            lambda: job_store.get_job(session, job_id, owner="bob"),
            lambda: epoch_store.list_epochs(session, job_id, "bob"),
            lambda: job_store.cancel_job(session, job_id, "bob"),
        ):
            with pytest.raises(JobNotFound, match=f"job {job_id} does not exist"):
                call()
        assert job_store.list_jobs(session, "bob") == ([], None)
        # nor can bob start from ann's model
        spec = ServiceJobSpec.model_validate(tiny_spec("b", model={"init": {"job": job_id}}))
        with pytest.raises(InvalidField, match=f"job {job_id} does not exist"):
            create(session, spec, owner="bob")


def test_an_idempotency_key_returns_the_job_it_made(db) -> None:
    spec = ServiceJobSpec.model_validate(tiny_spec("once"))
    with db.begin() as session:
        first, new = job_store.submit_job(session, OWNER, spec, limits=quota(10), key="k1")
        assert new
    with db.begin() as session:
        again, new = job_store.submit_job(session, OWNER, spec, limits=quota(10), key="k1")
        assert (again.id, new) == (first.id, False)
        other = ServiceJobSpec.model_validate(tiny_spec("other"))
        with pytest.raises(InvalidField, match="different body"):
            job_store.submit_job(session, OWNER, other, limits=quota(10), key="k1")
    with db.begin() as session:  # keys are per owner, and expire
        assert job_store.submit_job(session, "bob", spec, limits=quota(10), key="k1")[1]
        expired = job_store.submit_job(
            session, OWNER, spec, limits=quota(10), key="k1", key_expiry=timedelta(0)
        )
        assert expired[1] and expired[0].id != first.id
    with db.begin() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 3


def test_a_jobs_key_and_an_experiments_key_never_meet(db) -> None:
    """A job's key "experiment:k" and an experiment's key "k" are two keys, not one reused."""
    spec = ServiceJobSpec.model_validate(tiny_spec("e"))
    plan = Plan(FromCheckpoint("/data/fp.pt"), [Variant("variants.0", 0, None, [spec])])
    with db.begin() as session:
        job, new_job = job_store.submit_job(
            session, OWNER, spec, limits=quota(10), key="experiment:k"
        )
        experiment, new_experiment = experiment_store.create_experiment(
            session, OWNER, "e", {"name": "e"}, plan, limits=quota(10), key="k",
        )  # fmt: skip
        assert new_job and new_experiment and job.experiment_id is None
    with db.begin() as session:
        again, new = experiment_store.create_experiment(
            session, OWNER, "e", {"name": "e"}, plan, limits=quota(10), key="k",
        )  # fmt: skip
        assert (again.id, new) == (experiment.id, False)


def test_migrations_0010_and_0011_move_experiments_keys_and_version_them(database_url: str) -> None:
    from alembic import command

    from api.service.db import alembic_config

    engine = make_engine(database_url)
    config = alembic_config()
    job = (
        "INSERT INTO jobs (id, owner, name, status, spec, spec_version, created_at, "
        "progress_epoch, progress_fraction, attempts, history, cancel_requested, experiment_id) "
        "VALUES (:id, 'ann', 'j', 'queued', '{}', 1, CURRENT_TIMESTAMP, 0, 0, 0, '[]', false, :e)"
    )
    key = (
        "INSERT INTO idempotency_keys (owner, key, body_hash, job_id, created_at) "
        "VALUES ('ann', :key, 'h', :job, CURRENT_TIMESTAMP)"
    )
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0009")
        conn.execute(
            text("INSERT INTO experiments (id, owner, name, spec, created_at) "
                 "VALUES (:id, 'ann', 'e', '{}', CURRENT_TIMESTAMP)"), [{"id": 3}, {"id": 4}]
        )  # fmt: skip
        conn.execute(text(job), [{"id": 7, "e": 3}, {"id": 8, "e": None}, {"id": 9, "e": 3}])
        conn.execute(text(job.replace(", 1, CURRENT", ", 2, CURRENT")), {"id": 10, "e": 4})
        conn.execute(
            text(key), [{"key": "experiment:k", "job": 7}, {"key": "experiment:x", "job": 8}]
        )
    stored = "SELECT key, job_id FROM idempotency_keys ORDER BY job_id"
    upgrade_database(engine)
    with engine.begin() as conn:
        assert conn.execute(text(stored)).all() == [("experiment k", 7), ("experiment:x", 8)]
        # 0011: an experiment's spec version is its jobs' (version 2 came before 0011)
        version = "SELECT id, spec_version FROM experiments ORDER BY id"
        assert conn.execute(text(version)).all() == [(3, 1), (4, 2)]
        conn.execute(text(key), {"key": "experiment x", "job": 9})  # now apart from job 8's
        config.attributes["connection"] = conn
        command.downgrade(config, "0009")  # the job's key stays where only one fits
    with engine.connect() as conn:
        assert conn.execute(text(stored)).all() == [("experiment:k", 7), ("experiment:x", 8)]
    engine.dispose()


def test_an_owner_has_at_most_so_many_unfinished_jobs(db) -> None:
    spec = ServiceJobSpec.model_validate(tiny_spec("q"))
    with db.begin() as session:
        for _ in range(2):
            job_store.submit_job(session, OWNER, spec, limits=quota(2))
        with pytest.raises(TooManyJobs, match="2 unfinished jobs"):
            job_store.submit_job(session, OWNER, spec, limits=quota(2))
        job_store.submit_job(session, "bob", spec, limits=quota(2))  # bob has his own


def test_a_job_whose_workers_keep_dying_ends_failed_with_its_history(db) -> None:
    job_id = add_job(db)
    for worker in ("w1", "w2", "w3"):
        with db.begin() as session:
            assert worker_store.claim_job(session, job_id, worker, 60, max_takeovers=3).outcome == (
                "claimed"
            )
        expire_lease(db, job_id)
    with db.begin() as session:
        assert (
            worker_store.claim_job(session, job_id, "w4", 60, max_takeovers=3).outcome == "finished"
        )
    with db.begin() as session:
        job = job_store.get_job(session, job_id)
        assert job.status == JobStatus.failed and job.attempts == 3
        assert "stopped answering 3 times (workers w1, w2, w3)" in job.error
        assert [(h["worker"], h["took_over"]) for h in job.history] == [
            ("w1", False), ("w2", True), ("w3", True),
        ]  # fmt: skip


def test_an_error_message_is_stored_clean_and_bounded(db) -> None:
    job_id = add_job(db)
    claim(db, job_id, "w1")
    with db.begin() as session:  # PostgreSQL refuses a NUL: the job must still end
        error = "ValueError: bad \x00root\x1b[31m\n" + "x" * 10_000
        assert worker_store.finish_job(session, job_id, "w1", JobStatus.failed, error=error)
    with db.begin() as session:
        stored = job_store.get_job(session, job_id).error
        assert stored.startswith("ValueError: bad ?root?[31m\nxxx") and stored.endswith("...")
        assert len(stored) == job_store.MAX_ERROR


def test_jobs_that_lost_their_message_are_found_for_republishing(db) -> None:
    queued, running, fresh = add_job(db), add_job(db), add_job(db)
    claim(db, running, "w1")
    expire_lease(db, running)
    long_ago = utcnow() - timedelta(hours=1)
    with db.begin() as session:
        worker_store.mark_published(session, [queued, running, fresh])
        session.execute(
            update(Job).where(Job.id.in_([queued, running])).values(published_at=long_ago)
        )
        session.execute(update(Job).where(Job.id == running).values(lease_expires_at=long_ago))
    with db.begin() as session:
        assert worker_store.stale_jobs(session, utcnow() - timedelta(minutes=10)) == (
            [queued],
            [running],
        )


def _health(zero: float, step: float) -> list[dict]:
    shares = [(1 - zero) / 2, zero, (1 - zero) / 2]
    return [
        {"layer": "conv", "kind": "weight", "step": step, "zero": zero, "levels": [-1, 0, 1],
         "shares": shares},
    ]  # fmt: skip


def test_reading_a_job_is_one_query_whatever_its_epochs(db) -> None:
    """GET /v1/jobs/{id}: the job joined with its epochs in one statement; its warnings were
    computed when the epochs were written, from their quantizer health."""
    job_id = add_job(db)
    assert claim(db, job_id, "w1").outcome == "claimed"
    with db.begin() as session:
        for epoch, zero in enumerate([0.3, 0.5, 0.97], start=1):
            health = _health(zero, step=0.1 * epoch)
            metrics = EpochMetrics(**{**METRICS, "epoch": epoch, "quantizers": health})
            assert worker_store.record_epoch(session, job_id, "w1", metrics)
    statements: list[str] = []
    engine = db.kw["bind"]

    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with db.begin() as session:
            detail = JobDetail.of(job_store.get_job(session, job_id, owner=OWNER, with_epochs=True))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1 and "JOIN epochs" in selects[0], statements
    assert [e.epoch for e in detail.epochs] == [1, 2, 3]
    # the last epoch's weights collapsed; the step tripled (not 10x) and kept moving
    assert detail.warnings == [
        "conv (weight): 97% of the weights are 0, the step is too large (lower the step's "
        "learning rate, or check its initialisation)"
    ]


def test_an_owners_list_is_read_by_index(db) -> None:
    if db.kw["bind"].dialect.name != "sqlite":
        pytest.skip("the plan of a tiny PostgreSQL table is a sequential scan whatever the index")
    with db.begin() as session:
        plan = session.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE owner = 'x' ORDER BY id DESC LIMIT 51"
            )
        ).all()
    detail = " ".join(str(row[-1]) for row in plan)
    assert "ix_jobs_owner_id" in detail and "TEMP B-TREE" not in detail, detail


def test_migration_0008_gives_existing_jobs_their_warnings(database_url: str) -> None:
    from alembic import command

    from api.service.db import alembic_config

    engine = make_engine(database_url)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0007")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, owner, name, status, spec, spec_version, created_at, "
                "progress_epoch, progress_fraction, attempts, history, cancel_requested) VALUES "
                "(7, 'ann', 'old', 'succeeded', '{}', 1, CURRENT_TIMESTAMP, 2, 1.0, 1, '[]', "
                "false)"
            )
        )
        for epoch, zero in ((1, 0.2), (2, 0.99)):
            health = json.dumps(_health(zero, step=0.1 * epoch))
            conn.execute(
                text(
                    "INSERT INTO epochs (job_id, epoch, train_loss, train_top1, test_loss, "
                    "test_top1, test_top5, lr, seconds, images_per_second, recorded_at, "
                    "quantizers) VALUES (7, :e, 1, 1, 1, 1, 1, 0.1, 1, 1, CURRENT_TIMESTAMP, :q)"
                ),
                {"e": epoch, "q": health},
            )
    upgrade_database(engine)
    with sessionmaker(engine)() as session:
        job = session.get(Job, 7)
        assert job.warnings == [
            "conv (weight): 99% of the weights are 0, the step is too large (lower the step's "
            "learning rate, or check its initialisation)"
        ]
    engine.dispose()
