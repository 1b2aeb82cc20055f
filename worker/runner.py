"""Run one delivered job: claim it, train it with lsq, record every epoch, end it.

The database decides who runs a job. A worker claims it with a lease that a heartbeat thread
renews; a second delivery of the same message finds the lease alive and only waits; a
delivery after the owner died (lease expired) takes over and resumes from the last
checkpoint. Every error of the job itself ends the job ``failed``; the worker goes on.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api.service import dispatch, owners
from api.service.artifacts import folder_bytes, job_folder
from api.service.config import Settings, get_settings
from api.service.db import DATABASE_UNAVAILABLE, session_scope
from api.service.errors import JobNotFound
from api.service.job_spec import ServiceJobSpec, for_the_core, source_jobs, upload_files
from api.service.limits import check_batch, check_files
from api.service.models import Experiment, JobStatus, utcnow
from api.service.owners import Limits
from api.service.queue import enqueue_when_committed
from api.service.store import jobs as job_store
from api.service.store import worker as worker_store
from api.service.store.uploads import network_of
from api.service.uploads import blob
from lsq.cost import Tally
from lsq.files import MODEL
from lsq.metrics import EpochMetrics, RunResult
from lsq.spec import JobSpec

from . import tracking
from .app import SHUTTING_DOWN, worker_name
from .plots import experiment_plot

log = logging.getLogger(__name__)


# ------------------------------------------------------------------- what a delivery leads to


@dataclass(frozen=True)
class Ack:
    """Done with the message: the job ended (`status`), or there was nothing to do (None)."""

    status: JobStatus | None
    why: str = ""


@dataclass(frozen=True)
class RetryLater:
    """Look at the job again after `seconds` (another worker holds it, or it waits)."""

    seconds: float
    why: str


@dataclass(frozen=True)
class Requeue:
    """Give the message back to the broker for the next worker (this one is stopping)."""

    why: str


Outcome = Ack | RetryLater | Requeue


class Stop(StrEnum):
    """Why a running job stopped before its last epoch; set where the stop is decided."""

    cancelled = "cancelled"  # its owner asked (cancel_requested)
    lease_lost = "lease_lost"  # another worker took the job over: write nothing more
    fenced = "fenced"  # heartbeats failed for too long: this worker gave the lease up
    shutdown = "shutdown"  # this worker is stopping: the job goes back to the queue
    time_limit = "time_limit"  # it has run for its owner's wall-clock limit: it fails


class LeaseLost(Exception):
    """Another worker took the job over (this one missed its heartbeats): stop, write nothing."""


# ---------------------------------------------------------------------------------- the lease


class LeaseKeeper(threading.Thread):
    """Heartbeat: renews the lease, stores the latest progress, and reads the cancel flag."""

    def __init__(self, job_id: int, worker: str, settings: Settings, claimed: Claimed) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.job_id, self.worker, self.settings = job_id, worker, settings
        self.ran_before, self.began = claimed.run_seconds, time.monotonic()
        self.deadline = self.began + claimed.limit_seconds - claimed.run_seconds
        self.stop_reason: Stop | None = None
        self._stop_lock = threading.Lock()  # the training and heartbeat threads both decide
        self._done = threading.Event()
        self._progress: tuple[int, float] | None = None

    def progress(self, epoch: int, fraction: float) -> None:
        self._progress = (epoch, fraction)  # written to the database by the next heartbeat

    def stop_as(self, reason: Stop) -> None:
        with self._stop_lock:
            if self.stop_reason is None:  # the first reason decides
                self.stop_reason = reason

    def should_stop(self) -> bool:
        if SHUTTING_DOWN.is_set():
            self.stop_as(Stop.shutdown)
        if time.monotonic() >= self.deadline:
            self.stop_as(Stop.time_limit)
        return self.stop_reason is not None

    def run(self) -> None:
        renewed = time.monotonic()
        while not self._done.wait(self.settings.heartbeat_seconds):
            attempt = time.monotonic()
            try:
                with session_scope() as session:
                    lease = worker_store.renew_lease(
                        session, self.job_id, self.worker, self.settings.lease_seconds,
                        self._progress, self.ran_before + attempt - self.began,
                    )  # fmt: skip
            except Exception:  # a database hiccup: the lease has slack for a few missed beats
                log.exception("job %s: heartbeat failed", self.job_id)
                self._fence_if_late(renewed)
                continue
            renewed = attempt
            if not lease.held:
                self.stop_as(Stop.lease_lost)
            elif lease.cancel_requested:
                self.stop_as(Stop.cancelled)

    def _fence_if_late(self, renewed: float) -> None:
        """Stop before the lease can expire: another worker may take the job over then, and
        two trainings must never share its folder."""
        late = time.monotonic() - renewed
        if late > self.settings.lease_seconds - self.settings.heartbeat_seconds:
            log.error("job %s: lease not renewed for %.0f s; stopping", self.job_id, late)
            self.stop_as(Stop.fenced)

    def close(self) -> None:
        self._done.set()
        self.join()


# -------------------------------------------------------------------------- claim, then run


@dataclass(frozen=True)
class Claimed:
    """A job this worker now holds the lease of."""

    job_id: int
    attempt: int
    folder: str  # its files' folder name (Job.folder)
    spec: dict[str, Any]  # as stored: validated when the run starts, so a bad one fails the job
    sources: dict[int, Source]  # the jobs whose models it uses
    experiment_id: int | None
    run_seconds: float  # what earlier attempts ran
    limit_seconds: float  # its owner's limit on the seconds run, all attempts together
    network: Tally | None = None  # an uploaded ONNX model's cost per image (lsq.cost)
    owner: str = ""
    experiment: tuple[str, str] | None = None  # its name and folder: MLflow's parent run


@dataclass(frozen=True)
class Source:
    """A job whose model another uses: its status and folder (None: missing, or another
    owner's)."""

    status: JobStatus | None
    folder: str | None = None


def execute(job_id: int) -> Outcome:
    """Everything a delivery of job `job_id` leads to; never raises for an error of the job."""
    claimed = claim(job_id)
    if isinstance(claimed, Claimed):
        return run_claimed(claimed)
    return claimed


def claim(job_id: int) -> Claimed | Outcome:
    """Take the lease of the fairest job that can run (api.service.dispatch.claim_next): a message
    is a turn, whichever job it names. With none, say what to do with the message."""
    settings = get_settings()
    defaults = Limits.defaults(settings)
    with session_scope() as session:
        args = worker_name(), settings.lease_seconds, settings.max_attempts, defaults
        job = dispatch.claim_next(session, *args)
        if job is None:
            return _no_turn(session, job_id, settings)
        if job.id != job_id:
            log.info("job %s: its turn goes to job %s, the fairest to run now", job_id, job.id)
            _keep_a_turn(session, job_id)
        limits = owners.limits_of(session, job.owner, defaults)
        stored = owners.usage_of(session, job.owner).storage_bytes  # jobs ended since it queued
        if problem := owners.storage_full(job.owner, stored, limits):
            worker_store.finish_job(
                session, job.id, args[0], JobStatus.failed, error=problem, stored_bytes=0
            )
            return Ack(JobStatus.failed, problem)
        spec = job_store.stored_spec(job)
        sources = {i: _source(session, i, job.owner) for i in source_jobs(spec).values()}
        seconds = limits.max_job_seconds
        network = network_of(session, job.owner, (spec.get("model") or {}).get("upload"))
        experiment = session.get(Experiment, job.experiment_id) if job.experiment_id else None
        return Claimed(
            job.id, job.attempts, job.folder, spec, sources, job.experiment_id,
            job.run_seconds, seconds, network, job.owner,
            (experiment.name, experiment.folder) if experiment else None,
        )  # fmt: skip


def _keep_a_turn(session: Session, job_id: int) -> None:
    """A queued job whose message another job used gets a new one: every queued job keeps a
    message of its own (the other job's message finds it running, or ended, and is dropped)."""
    try:
        queued = job_store.get_job(session, job_id).status == JobStatus.queued
    except JobNotFound:
        return
    if queued:
        enqueue_when_committed(session, job_id)


def _no_turn(session: Session, job_id: int, settings: Settings) -> Outcome:
    """Nothing can run now: keep the message while its job may still need to run."""
    try:
        job = job_store.get_job(session, job_id)
    except JobNotFound:
        return Ack(None, "no such job")
    if job.status == JobStatus.queued:  # waits for a model, or its owner's running jobs
        worker_store.mark_published(session, [job_id])  # its message is alive: no sweep needed
        return RetryLater(settings.retry_seconds, "it waits for another job, or its turn")
    if job.status == JobStatus.running and job.lease_expires_at is not None:
        # a duplicate message: take the job over if its worker stops renewing the lease
        wait = max(1.0, (job.lease_expires_at - utcnow()).total_seconds() + 1)
        return RetryLater(wait, "another worker holds its lease")
    return Ack(None, "job finished" if job.status.finished else f"job {job.status}")


def run_claimed(claimed: Claimed) -> Outcome:
    """Train a claimed job to its end; every error of the job ends it `failed`. Then redraw
    its experiment's plot, from what the job recorded (its result too)."""
    try:
        return _attempt(claimed)
    finally:
        if claimed.experiment_id is not None:
            experiment_plot(claimed.experiment_id, final=True)


def _attempt(claimed: Claimed) -> Outcome:
    from lsq import compile_cache
    from lsq.train import Cancelled, run  # torch loads in the worker only, at its first job

    settings, me, job_id = get_settings(), worker_name(), claimed.job_id
    compile_cache.use(settings.compile_cache)  # shared by every worker (the first call wins)
    log.info("job %s: attempt %s on %s", job_id, claimed.attempt, me)
    out = job_folder(settings, claimed.folder)
    keeper = LeaseKeeper(job_id, me, settings, claimed)
    keeper.start()
    tracker = tracking.start(settings, _about(claimed), out)
    try:
        spec = _core_spec(claimed, settings)
        _prepare_folder(claimed, out, me)

        def record(metrics: EpochMetrics) -> None:
            _record(job_id, me, metrics, claimed.experiment_id)
            if tracker is not None:  # after the store has it
                tracker.epoch(metrics)

        stop = keeper.should_stop
        result = run(spec, out, on_epoch=record, on_progress=keeper.progress,
                     should_cancel=stop, resume=True)  # fmt: skip
    except LeaseLost:
        return Ack(None, "lost its lease")
    except Cancelled:
        return _stopped(claimed, me, keeper.stop_reason, settings, tracker)
    except DATABASE_UNAVAILABLE:
        raise  # the database, not the job: the task tries again later (worker.tasks)
    except Exception as e:
        if isinstance(e, ValueError | FileNotFoundError):  # the spec's fault: say it, briefly
            log.warning("job %s failed: %s", job_id, e)
        else:
            log.exception("job %s failed", job_id)
        _free_memory()
        error = f"{type(e).__name__}: {e}"
        return _finish(claimed, me, JobStatus.failed, error=error, tracker=tracker)
    finally:
        keeper.close()
    return _finish(claimed, me, JobStatus.succeeded, result=result, tracker=tracker)


def _about(claimed: Claimed) -> dict[str, Any]:
    """What MLflow is told of a job (worker.tracking.start)."""
    experiment = None
    if claimed.experiment_id is not None and claimed.experiment is not None:
        name, folder = claimed.experiment
        experiment = {"id": claimed.experiment_id, "name": name, "folder": folder}
    return {"id": claimed.job_id, "folder": claimed.folder, "name": claimed.spec.get("name", ""),
            "owner": claimed.owner, "spec": claimed.spec, "experiment": experiment}  # fmt: skip


def _stopped(
    claimed: Claimed,
    worker: str,
    reason: Stop | None,
    settings: Settings,
    tracker: tracking.Tracker | None,
) -> Outcome:
    job_id = claimed.job_id
    match reason:
        case Stop.cancelled:
            return _finish(claimed, worker, JobStatus.cancelled, tracker=tracker)
        case Stop.time_limit:
            error = (
                f"time limit: it ran {claimed.limit_seconds:,.0f} s, its owner's limit "
                "(LSQ_MAX_JOB_SECONDS); its last checkpoint is kept"
            )
            return _finish(claimed, worker, JobStatus.failed, error=error, tracker=tracker)
        case Stop.lease_lost:
            return Ack(None, "another worker took it over")
        case Stop.fenced:  # maybe nobody else has the job: look again once the lease expired
            return RetryLater(settings.lease_seconds, "its lease could not be renewed")
        case Stop.shutdown:  # give the job back for the next worker
            with session_scope() as session:
                released = worker_store.release_job(session, job_id, worker)
            return Requeue("the worker is stopping") if released else Ack(None, "lost its lease")
        case None:  # only the keeper stops a run
            raise RuntimeError(f"job {job_id} stopped without a reason")


def _source(session: Session, job_id: int, owner: str) -> Source:
    """A job whose model another uses, as `owner` may see it."""
    try:
        source = job_store.get_job(session, job_id, owner=owner)
    except JobNotFound:
        return Source(None)
    return Source(source.status, source.folder)


def _core_spec(claimed: Claimed, settings: Settings) -> JobSpec:
    """The core's spec: each `{job: ID}` replaced by the path of that job's model."""
    spec = ServiceJobSpec.model_validate(claimed.spec)
    check_files(spec, settings)  # again: a folder may have become a symlink since submission
    check_batch(spec, settings, one_host=not _on_gpu(spec), network=claimed.network)
    models = {}
    for field, source_id in source_jobs(claimed.spec).items():
        source = claimed.sources.get(source_id, Source(None))
        path = job_folder(settings, source.folder) / MODEL if source.folder else None
        if source.status != JobStatus.succeeded or path is None or not path.is_file():
            state = f"ended {source.status}" if source.status else "does not exist"
            where = f" ({path})" if path else ""
            raise FileNotFoundError(
                f"{field} names job {source_id}, which {state}; there is no final model{where}"
            )
        models[field] = str(path)
    for field, (upload_id, sha, kind) in upload_files(spec).items():
        path = blob(settings, sha, kind)
        if not path.is_file():
            raise FileNotFoundError(f"{field}: upload {upload_id}'s file is gone ({path})")
        models[field] = str(path)
    return for_the_core(spec, models)


def _on_gpu(spec: JobSpec) -> bool:
    import torch

    return spec.training.device != "cpu" and torch.cuda.is_available()


def _prepare_folder(claimed: Claimed, out: Path, worker: str) -> None:
    """A first attempt makes the folder, which must not exist (its name is random: anything
    there was put there by someone else); a resume records the checkpoint's epochs again (the
    last one may not have been recorded before the previous worker stopped). Never through a
    symlink: the folder must be a real one, in the artifacts folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if claimed.attempt == 1 or not os.path.lexists(out):  # an earlier attempt may have died
        out.mkdir()  # FileExistsError (the job fails, saying so) for anything already there
        return
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{out} is not this job's own folder; it runs no further")
    from lsq.outputs import saved_epochs

    for metrics in saved_epochs(out):
        _record(claimed.job_id, worker, metrics)


def _record(
    job_id: int, worker: str, metrics: EpochMetrics, experiment_id: int | None = None
) -> None:
    with session_scope() as session:
        if not worker_store.record_epoch(session, job_id, worker, metrics):
            raise LeaseLost()
    if experiment_id is not None:
        experiment_plot(experiment_id)


def _finish(
    claimed: Claimed,
    worker: str,
    status: JobStatus,
    result: RunResult | None = None,
    error: str | None = None,
    tracker: tracking.Tracker | None = None,
) -> Outcome:
    """End the job, with the bytes its folder holds (its owner's storage counts them), and
    its MLflow run (a warning when MLflow did not take it all)."""
    job_id, stored = claimed.job_id, folder_bytes(job_folder(get_settings(), claimed.folder))
    warning = tracker.end(status, result) if tracker is not None else None
    with session_scope() as session:
        ended = worker_store.finish_job(
            session, job_id, worker, status, result=result, error=error, stored_bytes=stored,
            warning=warning,
        )  # fmt: skip
    log.info("job %s: %s", job_id, status if ended else "lost its lease before it ended")
    return Ack(status) if ended else Ack(None, "lost its lease before it ended")


def _free_memory() -> None:
    """After a failure (e.g. out of memory), free what the failed job held before the next."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
