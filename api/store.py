"""Every query of the service. The API and the worker both go through these functions.

Functions take a Session and leave committing to the caller (one short transaction each:
``api.db.session_scope`` or the API's per-request session). Worker-side writes are guarded by
the lease: they only touch a job that is ``running`` under that worker's name, so a worker that
lost its job (its lease expired and another took over) cannot overwrite anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from lsq.metrics import EpochMetrics, RunResult
from lsq.spec import upgrade_spec

from .models import EPOCH_METRICS, Epoch, Job, JobStatus, utcnow
from .spec import MAX_JOB_ID, ServiceJobSpec, source_job


class JobNotFound(LookupError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class JobConflict(Exception):
    """The request does not apply to the job in its current state."""


class InvalidField(ValueError):
    """A value that is well-formed but not acceptable here; `field` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------------------------- API side


def create_job(session: Session, spec: ServiceJobSpec) -> Job:
    """Add a queued job. A ``model.init: {job: ID}`` must name a job that can still succeed."""
    if (source_id := source_job(spec)) is not None:
        source = session.get(Job, source_id)
        if source is None:
            raise InvalidField("model.init.job", f"job {source_id} does not exist")
        if source.status in (JobStatus.failed, JobStatus.cancelled):
            raise InvalidField(
                "model.init.job",
                f"job {source.id} ended {source.status}; it has no final model to start from",
            )
    job = Job(name=spec.name, spec=spec.model_dump(mode="json"), status=JobStatus.queued)
    session.add(job)
    session.flush()  # assigns the id
    return job


def stored_spec(job: Job) -> dict[str, Any]:
    """A job's spec document, upgraded to the current version of lsq.spec (never re-validated
    here: a stored spec stays readable whatever the current model accepts)."""
    return upgrade_spec(job.spec, job.spec_version)


def get_job(session: Session, job_id: int, *, with_epochs: bool = False) -> Job:
    if not _is_id(job_id):
        raise JobNotFound(job_id)
    query = select(Job).where(Job.id == job_id)
    if with_epochs:
        query = query.options(selectinload(Job.epochs))
    job = session.scalars(query).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first. The cursor is the last id of the previous page: ids only grow, so jobs
    added meanwhile land before page one and never shift later pages."""
    query = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        if not re.fullmatch(r"[0-9]{1,10}", cursor) or int(cursor) > MAX_JOB_ID:
            raise InvalidField("cursor", "not a cursor returned by this API (next_cursor)")
        query = query.where(Job.id < int(cursor))
    jobs = list(session.scalars(query))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, (str(jobs[-1].id) if more else None)


def list_epochs(session: Session, job_id: int) -> list[Epoch]:
    get_job(session, job_id)
    return list(session.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)))


def cancel_job(session: Session, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one is flagged and stops at the next batch
    boundary (its worker reads the flag). Cancelling a cancelled job changes nothing."""
    job = _locked(session, job_id)
    if job is None:
        raise JobNotFound(job_id)
    now = utcnow()
    if job.status == JobStatus.queued:
        job.status, job.finished_at = JobStatus.cancelled, now
    elif job.status == JobStatus.running and (job.lease_expires_at or now) <= now:
        _end(job, JobStatus.cancelled, now)  # its worker is gone: nobody would read the flag
    elif job.status == JobStatus.running:
        job.cancel_requested = True
    elif job.status != JobStatus.cancelled:
        raise JobConflict(f"job {job_id} already {job.status}; only queued or running jobs stop")
    return job


# ------------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class Claim:
    """What a worker may do with a delivered job."""

    outcome: Literal["claimed", "busy", "finished", "missing"]
    job: Job | None = None
    retry_at: datetime | None = None  # busy: when the current owner's lease runs out


def claim_job(session: Session, job_id: int, worker: str, lease_seconds: float) -> Claim:
    """Take a queued job, or a running one whose worker stopped renewing its lease.

    The row lock (PostgreSQL) or the write lock (SQLite) makes this atomic: of two deliveries
    of one message, exactly one claims the job.
    """
    job = _locked(session, job_id)
    if job is None:
        return Claim("missing")
    now = utcnow()
    if job.status.finished:
        return Claim("finished", job)
    if job.status == JobStatus.running:
        if job.lease_expires_at is not None and job.lease_expires_at > now:
            return Claim("busy", job, retry_at=job.lease_expires_at)
        if job.cancel_requested:  # its worker died after the cancel: nothing left to stop
            _end(job, JobStatus.cancelled, now)
            return Claim("finished", job)
    job.status, job.worker, job.attempts = JobStatus.running, worker, job.attempts + 1
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    job.started_at = job.started_at or now
    return Claim("claimed", job)


@dataclass(frozen=True)
class Lease:
    held: bool
    cancel_requested: bool = False


def renew_lease(
    session: Session,
    job_id: int,
    worker: str,
    lease_seconds: float,
    progress: tuple[int, float] | None = None,
) -> Lease:
    """The heartbeat: extend the lease, store progress, and read the cancel flag."""
    job = _owned(session, job_id, worker)
    if job is None:
        return Lease(held=False)
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
    if progress is not None:
        job.progress_epoch, job.progress_fraction = progress
    return Lease(held=True, cancel_requested=job.cancel_requested)


def record_epoch(session: Session, job_id: int, worker: str, metrics: EpochMetrics) -> bool:
    """Write one finished epoch (a rewrite of the same epoch replaces it). False: lease lost."""
    job = _owned(session, job_id, worker)
    if job is None:
        return False
    values = {"job_id": job_id, "recorded_at": utcnow(), **metrics.model_dump()}
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[
        session.get_bind().dialect.name
    ]
    stmt = insert(Epoch).values(values)
    updated = {k: stmt.excluded[k] for k in (*EPOCH_METRICS, "recorded_at")}
    session.execute(stmt.on_conflict_do_update(index_elements=["job_id", "epoch"], set_=updated))
    if values["epoch"] >= job.progress_epoch:  # a resume rewrites earlier epochs too
        job.progress_epoch, job.progress_fraction = values["epoch"], 1.0
    return True


def finish_job(
    session: Session,
    job_id: int,
    worker: str,
    status: JobStatus,
    result: RunResult | None = None,
    error: str | None = None,
) -> bool:
    """End a job this worker owns as succeeded, failed or cancelled. False: lease lost."""
    job = _owned(session, job_id, worker)
    if job is None:
        return False
    _end(job, status, utcnow(), result=result.model_dump() if result else None, error=error)
    return True


def release_job(session: Session, job_id: int, worker: str) -> bool:
    """Give a running job back to the queue (worker shutting down); it resumes elsewhere."""
    job = _owned(session, job_id, worker)
    if job is None:
        return False
    if job.cancel_requested:  # cancelled while stopping: end it rather than run it again
        _end(job, JobStatus.cancelled, utcnow())
    else:
        job.status, job.worker, job.lease_expires_at = JobStatus.queued, None, None
    return True


def mark_published(session: Session, job_ids: list[int]) -> None:
    """Record that these jobs' messages went to the broker."""
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(published_at=utcnow()))


def unpublished_jobs(session: Session, older_than: datetime) -> list[int]:
    """Queued jobs whose message never reached the broker (created before `older_than`, so a
    publish still in flight right after its commit is left alone)."""
    query = select(Job.id).where(
        Job.status == JobStatus.queued, Job.published_at.is_(None), Job.created_at < older_than
    )
    return list(session.scalars(query.order_by(Job.id)))


def unfinished_jobs(session: Session) -> list[Job]:
    """Queued and running jobs, oldest first: what a starting worker makes sure is queued."""
    query = select(Job).where(Job.status.in_([JobStatus.queued, JobStatus.running]))
    return list(session.scalars(query.order_by(Job.id)))


# ---------------------------------------------------------------------------------- helpers


def _is_id(job_id: int) -> bool:
    """Larger ids name no job, and must not reach SQLite, whose driver overflows on them."""
    return 1 <= job_id <= MAX_JOB_ID


def _locked(session: Session, job_id: int) -> Job | None:
    if not _is_id(job_id):
        return None
    return session.get(Job, job_id, with_for_update=True, populate_existing=True)


def _owned(session: Session, job_id: int, worker: str) -> Job | None:
    job = _locked(session, job_id)
    if job is None or job.status != JobStatus.running or job.worker != worker:
        return None
    return job


def _end(
    job: Job,
    status: JobStatus,
    now: datetime,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    job.status, job.finished_at, job.lease_expires_at = status, now, None
    job.result, job.error = result, error
