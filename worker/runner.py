"""Run one delivered job: claim it, train it with lsq, record every epoch, end it.

The database decides who runs a job. A worker claims it with a lease that a heartbeat thread
renews; a second delivery of the same message finds the lease alive and only watches; a
delivery after the owner died (lease expired) takes over and resumes from the last
checkpoint. Every error of the job itself ends the job ``failed``; the worker goes on.
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api import store
from api.artifacts import job_folder
from api.config import Settings, get_settings
from api.db import DATABASE_UNAVAILABLE, session_scope
from api.models import JobStatus, utcnow
from lsq.files import CHECKPOINT, MODEL
from lsq.spec import JobRef, JobSpec

from .app import SHUTTING_DOWN, worker_name

log = logging.getLogger(__name__)
MAX_ERROR = 4000


@dataclass(frozen=True)
class Outcome:
    status: str  # for the log: succeeded, failed, cancelled, released, lost, busy, waiting, ...
    retry_in: float | None = None  # look at the job again after this many seconds
    requeue: bool = False  # give the message back to the broker for the next worker


class LeaseLost(Exception):
    """Another worker took the job over (this one missed its heartbeats): stop, write nothing."""


class LeaseKeeper(threading.Thread):
    """Heartbeat: renews the lease, stores the latest progress, and reads the cancel flag."""

    def __init__(self, job_id: int, worker: str, settings: Settings) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.job_id, self.worker, self.settings = job_id, worker, settings
        self.cancelled, self.lost = threading.Event(), threading.Event()
        self.fenced = False  # lost because the database was out of reach, not to another worker
        self._done = threading.Event()
        self._progress: tuple[int, float] | None = None

    def progress(self, epoch: int, fraction: float) -> None:
        self._progress = (epoch, fraction)  # written to the database by the next heartbeat

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set() or SHUTTING_DOWN.is_set()

    def run(self) -> None:
        renewed = time.monotonic()
        while not self._done.wait(self.settings.heartbeat_seconds):
            attempt = time.monotonic()
            try:
                with session_scope() as session:
                    lease = store.renew_lease(
                        session,
                        self.job_id,
                        self.worker,
                        self.settings.lease_seconds,
                        self._progress,
                    )
            except Exception:  # a database hiccup: the lease has slack for a few missed beats
                log.exception("job %s: heartbeat failed", self.job_id)
                # Fence ourselves before the lease can expire: another worker may take the job
                # over then, and two trainings must never share its folder.
                slack = self.settings.lease_seconds - self.settings.heartbeat_seconds
                if time.monotonic() - renewed > slack:
                    log.error(
                        "job %s: lease not renewed for %.0f s; stopping",
                        self.job_id,
                        time.monotonic() - renewed,
                    )
                    self.fenced = True
                    self.lost.set()
                continue
            renewed = attempt
            if not lease.held:
                self.lost.set()
            elif lease.cancel_requested:
                self.cancelled.set()

    def stop(self) -> None:
        self._done.set()
        self.join()


def execute(job_id: int) -> Outcome:
    """Everything a delivery of job `job_id` leads to; never raises for an error of the job."""
    settings, me = get_settings(), worker_name()
    from lsq.train import Cancelled, run  # torch loads in the worker only, at its first job

    with session_scope() as session:
        try:
            job = store.get_job(session, job_id)
        except store.JobNotFound:
            return Outcome("missing")
        source = _source_status(session, job.spec)
        if job.status == JobStatus.queued and source in (JobStatus.queued, JobStatus.running):
            log.info("job %s: waiting for job %s, the model it starts from", job_id, source)
            return Outcome("waiting", retry_in=settings.retry_seconds)
        claim = store.claim_job(session, job_id, me, settings.lease_seconds)
        attempt, spec_data = (claim.job.attempts, claim.job.spec) if claim.job else (0, {})
    if claim.outcome == "busy":
        assert claim.retry_at is not None
        return Outcome("busy", retry_in=max(1.0, (claim.retry_at - utcnow()).total_seconds() + 1))
    if claim.outcome != "claimed":
        return Outcome(claim.outcome)

    log.info("job %s: attempt %s on %s", job_id, attempt, me)
    out = job_folder(settings, job_id)
    keeper = LeaseKeeper(job_id, me, settings)
    keeper.start()
    try:
        spec = _resolve(JobSpec.model_validate(spec_data), settings, source)
        if attempt == 1:
            shutil.rmtree(out, ignore_errors=True)  # a stale folder of an older database's job
        else:
            _restore_epochs(job_id, me, out)
        result = run(
            spec,
            out,
            on_epoch=lambda m: _record(job_id, me, m),
            on_progress=keeper.progress,
            should_cancel=keeper.should_stop,
            resume=True,
        )
    except LeaseLost:
        return Outcome("lost")
    except Cancelled:
        if keeper.fenced:  # maybe nobody else has the job: look again once the lease expired
            return Outcome("fenced", retry_in=settings.lease_seconds)
        if keeper.lost.is_set():
            return Outcome("lost")
        if keeper.cancelled.is_set():
            return _finish(job_id, me, JobStatus.cancelled)
        with session_scope() as session:  # the worker is stopping: give the job back
            released = store.release_job(session, job_id, me)
        return Outcome("released", requeue=True) if released else Outcome("lost")
    except DATABASE_UNAVAILABLE:
        raise  # the database, not the job: the task tries again later (worker.tasks)
    except Exception as e:
        log.exception("job %s failed", job_id)
        _free_memory()
        return _finish(job_id, me, JobStatus.failed, error=f"{type(e).__name__}: {e}"[:MAX_ERROR])
    finally:
        keeper.stop()
    return _finish(job_id, me, JobStatus.succeeded, result=result)


def _source_status(session: Session, spec: dict[str, Any]) -> JobStatus | None:
    """The status of the job this one starts from (model.init: {job: ID}), if any."""
    init = spec.get("model", {}).get("init")
    if not isinstance(init, dict) or "job" not in init:
        return None
    try:
        return store.get_job(session, init["job"]).status
    except store.JobNotFound:
        return None


def _resolve(spec: JobSpec, settings: Settings, source: JobStatus | None) -> JobSpec:
    """Replace model.init {job: ID} by the path of that job's final model."""
    init = spec.model.init
    if not isinstance(init, JobRef):
        return spec
    path = job_folder(settings, init.job) / MODEL
    if source != JobStatus.succeeded or not path.is_file():
        state = f"ended {source}" if source else "does not exist"
        raise FileNotFoundError(
            f"model.init names job {init.job}, which {state}; there is no final model ({path})"
        )
    return spec.model_copy(update={"model": spec.model.model_copy(update={"init": str(path)})})


def _record(job_id: int, worker: str, metrics: dict[str, Any]) -> None:
    with session_scope() as session:
        if not store.record_epoch(session, job_id, worker, metrics):
            raise LeaseLost()


def _restore_epochs(job_id: int, worker: str, out: Path) -> None:
    """On a resume, write the checkpoint's epochs: the last one may not have been recorded."""
    if (out / CHECKPOINT).is_file():
        from lsq import checkpoint

        for metrics in checkpoint.load(out / CHECKPOINT)["epochs"]:
            _record(job_id, worker, metrics)


def _finish(job_id: int, worker: str, status: JobStatus, **fields: Any) -> Outcome:
    with session_scope() as session:
        ended = store.finish_job(session, job_id, worker, status, **fields)
    log.info("job %s: %s", job_id, status if ended else "lost its lease before it ended")
    return Outcome(str(status) if ended else "lost")


def _free_memory() -> None:
    """After a failure (e.g. out of memory), free what the failed job held before the next."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
