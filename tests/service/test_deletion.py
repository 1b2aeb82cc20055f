"""An end for everything: deleting jobs and experiments (rows in one transaction, files after),
retention of old jobs' files, and job folders that are never read through a symlink. The store
on SQLite and PostgreSQL built by the real migrations; the routes over real HTTP (uvicorn); the
retention sweep in a real worker process; the dashboard's Delete in a real browser."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as Driver
from selenium.webdriver.common.by import By
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from api.service.config import Settings
from api.service.db import make_engine
from api.service.errors import ExperimentNotFound, InvalidField, JobConflict, JobNotFound
from api.service.experiments.plan import Plan, TrainedHere, Variant
from api.service.job_spec import ServiceJobSpec
from api.service.models import Epoch, Experiment, IdempotencyKey, Job, JobStatus, utcnow
from api.service.store import epochs as epoch_store
from api.service.store import experiments as experiment_store
from api.service.store import jobs as job_store
from api.service.store import worker as worker_store
from lsq.files import CHECKPOINT, METRICS, MODEL, PLOT
from lsq.metrics import EpochMetrics

from .conftest import TINY, Service, job_folder_name, quota, service_env, tiny_spec
from .test_dashboard import CHROMEDRIVER, CHROMIUM, until
from .test_security import Api, error_of

pytestmark = pytest.mark.timeout(300)

OWNER = "ann"
METRICS_ROW = {
    "epoch": 1, "train_loss": 1.0, "train_top1": 50.0, "test_loss": 1.1, "test_top1": 40.0,
    "test_top5": 90.0, "lr": 0.1, "seconds": 1.5, "images_per_second": 300.0,
}  # fmt: skip


# ------------------------------------------------------------------------------ the store


def add_job(db: sessionmaker[Session], key: str | None = None, **changes: object) -> int:
    spec = ServiceJobSpec.model_validate(tiny_spec("j", **changes))
    with db.begin() as session:
        return job_store.submit_job(session, OWNER, spec, limits=quota(1000), key=key)[0].id


def run_to(db: sessionmaker[Session], job_id: int, status: JobStatus, epochs: int = 0) -> None:
    """Claim the job as a worker would, record `epochs` epochs, and end it as `status`."""
    with db.begin() as session:
        assert worker_store.claim_job(session, job_id, "w1", lease_seconds=60).outcome == "claimed"
        for epoch in range(1, epochs + 1):
            metrics = EpochMetrics(**{**METRICS_ROW, "epoch": epoch})
            assert worker_store.record_epoch(session, job_id, "w1", metrics)
        assert worker_store.finish_job(session, job_id, "w1", status)


def ended_ago(db: sessionmaker[Session], job_id: int, days: float) -> None:
    with db.begin() as session:
        finished = utcnow() - timedelta(days=days)
        session.execute(update(Job).where(Job.id == job_id).values(finished_at=finished))


def count(db: sessionmaker[Session], model: type, **where: object) -> int:
    with db.begin() as session:
        query = select(func.count()).select_from(model).filter_by(**where)
        return session.scalar(query) or 0


def test_a_deleted_job_takes_its_epochs_and_keys_along(db) -> None:
    job_id = add_job(db, key="k1")
    run_to(db, job_id, JobStatus.succeeded, epochs=2)
    kept = add_job(db, key="k2")
    run_to(db, kept, JobStatus.failed, epochs=1)
    with db.begin() as session:
        folder = job_store.get_job(session, job_id).folder
        assert job_store.delete_job(session, job_id, OWNER) == job_store.Deleted([folder], [])
    assert count(db, Job, id=job_id) == 0
    assert count(db, Epoch, job_id=job_id) == 0  # the foreign keys cascade, on both databases
    assert count(db, IdempotencyKey, job_id=job_id) == 0
    assert count(db, Epoch, job_id=kept) == 1 and count(db, IdempotencyKey, job_id=kept) == 1
    with db.begin() as session, pytest.raises(JobNotFound):
        job_store.delete_job(session, job_id, OWNER)


def test_a_job_is_deleted_only_once_ended_and_when_no_unfinished_job_uses_its_model(db) -> None:
    source = add_job(db)
    with db.begin() as session:
        with pytest.raises(JobConflict, match=rf"queued; cancel it first .*{source}/cancel"):
            job_store.delete_job(session, source, OWNER)
    with db.begin() as session, pytest.raises(JobNotFound):  # another owner's: missing
        job_store.delete_job(session, source, "bob")
    run_to(db, source, JobStatus.succeeded)
    user = add_job(db, model={"init": {"job": source}})
    teacher = add_job(db, training={"distill": {"teacher": {"job": source}}})
    with db.begin() as session:
        with pytest.raises(JobConflict, match=f"job {user} .* uses the model of job {source}"):
            job_store.delete_job(session, source, OWNER)
        job_store.cancel_job(session, user, OWNER)
    with db.begin() as session:
        with pytest.raises(JobConflict, match=f"job {teacher} .* model of job {source}"):
            job_store.delete_job(session, source, OWNER)
        job_store.cancel_job(session, teacher, OWNER)
    with db.begin() as session:
        job_store.delete_job(session, source, OWNER)
    assert count(db, Job, id=source) == 0 and count(db, Job) == 2  # the users' records stay


def experiment(db: sessionmaker[Session]) -> tuple[int, list[int]]:
    """An experiment of a baseline and one variant (both queued), and its jobs' ids."""
    spec = ServiceJobSpec.model_validate(tiny_spec("e"))
    plan = Plan(TrainedHere(spec), [Variant("variants.0", 0, None, [spec])])
    with db.begin() as session:
        made, _ = experiment_store.create_experiment(
            session, OWNER, "e", {"name": "e"}, plan, limits=quota(100), key="e1"
        )
        session.flush()
        session.refresh(made)
        return made.id, [job.id for job in made.jobs]


def test_an_experiment_is_deleted_with_its_jobs_once_they_all_ended(db) -> None:
    experiment_id, (baseline, variant) = experiment(db)
    with db.begin() as session:  # its job is deleted with it, never alone
        with pytest.raises(JobConflict, match=f"belongs to experiment {experiment_id}"):
            job_store.delete_job(session, variant, OWNER)
        with pytest.raises(JobConflict, match=rf"\({baseline}, {variant}\); cancel it"):
            experiment_store.delete_experiment(session, experiment_id, OWNER)
        with pytest.raises(ExperimentNotFound):
            experiment_store.delete_experiment(session, experiment_id, "bob")
    run_to(db, baseline, JobStatus.succeeded, epochs=1)
    outside = add_job(db, model={"init": {"job": baseline}})  # another job uses the baseline
    with db.begin() as session:
        job_store.cancel_job(session, variant, OWNER)
    with db.begin() as session:
        with pytest.raises(JobConflict, match=f"job {outside} .* model of job {baseline}"):
            experiment_store.delete_experiment(session, experiment_id, OWNER)
        job_store.cancel_job(session, outside, OWNER)
    with db.begin() as session:
        folders = [job_store.get_job(session, i).folder for i in (baseline, variant)]
        plots = session.get(Experiment, experiment_id).folder
        deleted = experiment_store.delete_experiment(session, experiment_id, OWNER)
    assert deleted == job_store.Deleted(folders, [plots])
    assert count(db, Experiment) == 0 and count(db, Job) == 1  # `outside` stays
    assert count(db, Epoch) == 0 and count(db, IdempotencyKey) == 0


def test_retention_marks_the_files_of_jobs_that_ended_long_ago_in_batches(db) -> None:
    old, older, recent, in_use = (add_job(db) for _ in range(4))
    for job_id in (old, older, recent, in_use):
        run_to(db, job_id, JobStatus.succeeded, epochs=1)
    queued = add_job(db)
    user = add_job(db, model={"init": {"job": in_use}})
    for job_id, days in ((old, 10), (older, 20), (recent, 1), (in_use, 30), (queued, 30)):
        ended_ago(db, job_id, days)
    with db.begin() as session:
        folder = {i: job_store.get_job(session, i).folder for i in (old, older)}
    week_ago = utcnow() - timedelta(days=7)
    with db.begin() as session:  # the oldest first, at most `limit`; an unfinished user's never
        assert worker_store.prune_files(session, week_ago, limit=1) == [folder[older]]
    with db.begin() as session:
        assert worker_store.prune_files(session, week_ago, limit=10) == [folder[old]]
    with db.begin() as session:
        assert worker_store.prune_files(session, week_ago, limit=10) == []
        pruned = job_store.get_job(session, old)
        assert pruned.files_pruned_at is not None and pruned.stored_bytes == 0
        assert job_store.get_job(session, recent).files_pruned_at is None
        assert len(epoch_store.list_epochs(session, old, OWNER)) == 1  # the record stays readable
        job_store.cancel_job(session, user, OWNER)
    with db.begin() as session:  # its user ended: now its files go too
        assert worker_store.prune_files(session, week_ago, limit=10) == [
            job_store.get_job(session, in_use).folder
        ]


def test_a_job_whose_files_were_pruned_is_no_model_to_start_from(db) -> None:
    source = add_job(db)
    run_to(db, source, JobStatus.succeeded)
    ended_ago(db, source, 10)
    with db.begin() as session:
        worker_store.prune_files(session, utcnow(), limit=10)
    with pytest.raises(InvalidField, match="files were removed") as refused:
        add_job(db, model={"init": {"job": source}})
    assert refused.value.field == "model.init.job"


def test_workers_pruning_at_once_never_take_the_same_job(pg_store_url: str) -> None:
    engine = make_engine(pg_store_url)
    db = sessionmaker(engine, expire_on_commit=False)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE jobs, epochs, idempotency_keys, experiments, owners"))
    first, second = add_job(db), add_job(db)
    for job_id in (first, second):
        run_to(db, job_id, JobStatus.cancelled)
        ended_ago(db, job_id, 10 if job_id == first else 9)
    try:
        with db.begin() as one, db.begin() as two:
            taken = worker_store.prune_files(
                one, utcnow(), limit=1
            )  # holds its row until it commits
            two.execute(text("SET LOCAL lock_timeout = '2s'"))  # waiting on it would fail
            assert taken + worker_store.prune_files(two, utcnow(), limit=10) == [
                job_store.get_job(one, i).folder for i in (first, second)
            ]
    finally:
        engine.dispose()


@pytest.mark.parametrize("days", ["-1", "inf", "nan", "100000"])
def test_a_retention_that_is_no_number_of_days_is_refused(days: str) -> None:
    with pytest.raises(ValueError, match="LSQ_RETENTION_DAYS"):
        Settings(LSQ_RETENTION_DAYS=days)


# ------------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An API process alone: jobs stay queued until cancelled, which ends them."""
    server = Api(tmp_path_factory.mktemp("deletion"))
    yield server
    server.proc.stop()


@pytest.fixture(scope="module")
def ann(api: Api) -> Iterator[httpx.Client]:
    with api.client(OWNER) as client:
        yield client


def ended_job(api: Api, client: httpx.Client, name: str) -> tuple[int, Path]:
    """A cancelled job of the client's owner with files in its folder: its id and folder."""
    job_id = client.post("/v1/jobs", json=tiny_spec(name)).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    folder = api.data / "artifacts" / "jobs" / job_folder_name(api.data, job_id)
    write_files(folder)
    return job_id, folder


def write_files(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in (METRICS, MODEL, CHECKPOINT, PLOT):
        (folder / name).write_bytes(f"{folder.name}'s {name}".encode())


def test_a_finished_job_is_deleted_with_its_files(api: Api, ann: httpx.Client) -> None:
    job_id, folder = ended_job(api, ann, "done")
    kept, kept_folder = ended_job(api, ann, "kept")
    with api.client("bob") as bob:  # another owner's job is as missing as one never made
        refused = bob.delete(f"/v1/jobs/{job_id}")
        assert refused.status_code == 404 and "does not exist" in error_of(refused)["message"]
    assert folder.is_dir()
    deleted = ann.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert ann.get(f"/v1/jobs/{job_id}").status_code == 404
    assert not folder.exists() and kept_folder.is_dir()
    assert ann.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert ann.get(f"/v1/jobs/{kept}").status_code == 200


def test_a_queued_job_is_deleted_only_after_a_cancel(api: Api, ann: httpx.Client) -> None:
    job_id = ann.post("/v1/jobs", json=tiny_spec("waiting")).json()["id"]
    refused = ann.delete(f"/v1/jobs/{job_id}")
    assert refused.status_code == 409
    assert error_of(refused)["message"].startswith(f"job {job_id} is queued; cancel it first")
    assert ann.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    ann.post(f"/v1/jobs/{job_id}/cancel")
    assert ann.delete(f"/v1/jobs/{job_id}").status_code == 204


def test_an_experiment_is_deleted_with_its_jobs_and_plots(api: Api, ann: httpx.Client) -> None:
    body = {"name": "grid", "base": TINY, "baseline": {"train": True},
            "grid": {"quantization.weight": [[-1, 0, 1]]}}  # fmt: skip
    made = ann.post("/v1/experiments", json=body)
    assert made.status_code == 201, made.text
    experiment_id, jobs = made.json()["id"], [j["id"] for j in made.json()["jobs"]]
    refused = ann.delete(f"/v1/experiments/{experiment_id}")
    assert refused.status_code == 409 and "cancel it first" in error_of(refused)["message"]
    alone = ann.delete(f"/v1/jobs/{jobs[0]}")
    assert alone.status_code == 409
    assert f"belongs to experiment {experiment_id}" in error_of(alone)["message"]
    ann.post(f"/v1/experiments/{experiment_id}/cancel")
    folders = [api.data / "artifacts" / "jobs" / job_folder_name(api.data, i) for i in jobs]
    for folder in folders:
        write_files(folder)
    plots = next((api.data / "artifacts" / "experiments").glob("*"), None)  # none drawn here
    with api.client("bob") as bob:
        assert bob.delete(f"/v1/experiments/{experiment_id}").status_code == 404
    assert ann.delete(f"/v1/experiments/{experiment_id}").status_code == 204
    assert ann.get(f"/v1/experiments/{experiment_id}").status_code == 404
    assert [ann.get(f"/v1/jobs/{i}").status_code for i in jobs] == [404] * len(jobs)
    assert not any(folder.exists() for folder in folders)
    assert plots is None or not plots.exists()


def test_a_job_folder_that_is_a_symlink_is_unlinked_never_followed(
    api: Api, ann: httpx.Client, tmp_path: Path
) -> None:
    job_id, folder = ended_job(api, ann, "linked")
    elsewhere = tmp_path / "precious"
    write_files(elsewhere)
    for name in list(folder.iterdir()):
        name.unlink()
    folder.rmdir()
    folder.symlink_to(elsewhere, target_is_directory=True)
    assert ann.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not folder.is_symlink() and not folder.exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted((METRICS, MODEL, CHECKPOINT, PLOT))


def test_a_job_folder_that_is_a_symlink_serves_nothing(api: Api, ann: httpx.Client) -> None:
    """A job's folder replaced by a symlink to another job's folder: the other job's files are
    not this job's, whatever the link says."""
    _, theirs = ended_job(api, ann, "theirs")
    mine = ann.post("/v1/jobs", json=tiny_spec("mine")).json()["id"]
    folder = api.data / "artifacts" / "jobs" / job_folder_name(api.data, mine)
    folder.symlink_to(theirs, target_is_directory=True)
    assert ann.get(f"/v1/jobs/{mine}/artifacts").json() == []
    for name in (METRICS, MODEL, CHECKPOINT):
        assert ann.get(f"/v1/jobs/{mine}/artifacts/{name}").status_code == 404
    assert ann.get(f"/v1/jobs/{mine}/{PLOT}").status_code == 404


def test_a_fresh_database_never_serves_the_files_an_older_one_left(tmp_path: Path) -> None:
    """The API pointed at a fresh database and an artifacts folder an older database's jobs
    wrote to: its job 1 is not their job 1."""
    jobs = tmp_path / "artifacts" / "jobs"
    for name in ("1", "2", "0123456789abcdef0123456789abcdef"):
        write_files(jobs / name)
    fresh = Api(tmp_path)
    try:
        with fresh.client("new-owner") as client:
            job = client.post("/v1/jobs", json=tiny_spec("first")).json()
            assert job["id"] == 1
            assert client.get("/v1/jobs/1/artifacts").json() == []
            for name in (METRICS, MODEL, CHECKPOINT):
                assert client.get(f"/v1/jobs/1/artifacts/{name}").status_code == 404
            assert client.get(f"/v1/jobs/1/{PLOT}").status_code == 404
    finally:
        fresh.proc.stop()
    assert (jobs / "1" / MODEL).read_bytes() == f"1's {MODEL}".encode()  # never the new job's


# ----------------------------------------------------------------------- the worker's sweep

RETAINED_SECONDS = 5.0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_worker_prunes_the_files_of_old_jobs_and_keeps_their_records(tmp_path: Path) -> None:
    env = service_env(
        tmp_path, LSQ_RETENTION_DAYS=str(RETAINED_SECONDS / 86_400), LSQ_SWEEP_SECONDS="0.5"
    )
    service = Service("retention", env, tmp_path)
    try:
        service.wait_ready()
        job_id = service.submit(tiny_spec("short-lived", training={"epochs": 1}))["id"]
        done = service.wait(job_id)
        assert done["status"] == "succeeded" and done["files_pruned_at"] is None
        names = [a["name"] for a in service.http.get(f"/v1/jobs/{job_id}/artifacts").json()]
        assert MODEL in names  # written, and kept for a while
        pruned = service.wait(job_id, lambda job: job["files_pruned_at"], RETAINED_SECONDS + 30)
        assert pruned["status"] == "succeeded" and len(pruned["epochs"]) == 1
        assert service.http.get(f"/v1/jobs/{job_id}/artifacts").json() == []
        folder = tmp_path / "artifacts" / "jobs" / job_folder_name(tmp_path, job_id)
        assert not folder.exists()
        assert "retention: removed the files of 1 jobs" in service.worker.output()
    finally:
        service.close()


# ------------------------------------------------------------------------------ the dashboard


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Debian's Chromium, headless (as tests/service/test_dashboard.py drives it)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Driver(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_of_an_ended_job_deletes_it(
    api: Api, ann: httpx.Client, browser: webdriver.Chrome
) -> None:
    job_id, folder = ended_job(api, ann, "from-the-page")
    token = ann.headers["Authorization"].removeprefix("Bearer ")
    browser.get(f"{api.url}/#/jobs/{job_id}?token={token}")  # the link the CLI prints
    until(lambda: browser.find_element(By.ID, "delete"), 30, "the Delete button").click()
    browser.switch_to.alert.accept()  # "Delete job N, its epochs and its files?"
    until(lambda: browser.current_url.endswith("#/"), 30, "the home page")
    assert ann.get(f"/v1/jobs/{job_id}").status_code == 404 and not folder.exists()
