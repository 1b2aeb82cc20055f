"""The worker's side: claim a delivered job, hold its lease, record its epochs, end or release
it; find jobs whose message was lost; and retention (prune ended jobs' files, measure them).

Writes are guarded by the lease: they only touch a job that is ``running`` under that worker's
name, so a worker that lost its job (its lease expired and another took over) cannot overwrite
anything.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.service.db import insert_for
from api.service.models import EPOCH_METRICS, FINISHED, Epoch, Job, JobStatus, utcnow
from api.service.store.epochs import job_quantizer_warnings
from api.service.store.jobs import clean_error, end, folders, locked, models_in_use
from lsq.metrics import EpochMetrics, RunResult


@dataclass(frozen=True)
class Claim:
    """What a worker may do with a delivered job."""

    outcome: Literal["claimed", "busy", "finished", "missing"]
    job: Job | None = None
    retry_at: datetime | None = None  # busy: when the current owner's lease runs out


def claim_job(
    session: Session, job_id: int, worker: str, lease_seconds: float, max_takeovers: int = 5
) -> Claim:
    """Take a queued job, or a running one whose worker stopped renewing its lease.

    The row lock (PostgreSQL) or the write lock (SQLite) makes this atomic: of two deliveries
    of one message, exactly one claims the job. A job whose workers died `max_takeovers` times
    while running it ends `failed` with that history instead of killing one more.
    """
    job = locked(session, job_id)
    if job is None:
        return Claim("missing")
    now = utcnow()
    if job.status.finished:
        return Claim("finished", job)
    if job.status == JobStatus.running:
        if job.lease_expires_at is not None and job.lease_expires_at > now:
            return Claim("busy", job, retry_at=job.lease_expires_at)
        if job.cancel_requested:  # its worker died after the cancel: nothing left to stop
            end(job, JobStatus.cancelled, now)
            return Claim("finished", job)
        # a worker died when the next claim took the job over from it; so did the current one
        history = job.history
        died = [a["worker"] for a, b in itertools.pairwise(history) if b["took_over"]]
        died.append(job.worker)
        if len(died) >= max_takeovers:
            end(job, JobStatus.failed, now, error=_gave_up(died))
            return Claim("finished", job)
    took_over = job.status == JobStatus.running
    job.history = [
        *job.history,
        {"attempt": job.attempts + 1, "worker": worker, "at": now.isoformat(),
         "took_over": took_over},
    ]  # fmt: skip
    job.status, job.worker, job.attempts = JobStatus.running, worker, job.attempts + 1
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    job.started_at = job.started_at or now
    return Claim("claimed", job)


def _gave_up(workers: list[str | None]) -> str:
    return (
        f"gave up: the worker running this job stopped answering {len(workers)} times "
        f"(workers {', '.join(map(str, workers))}); its last checkpoint is kept"
    )


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
    run_seconds: float | None = None,
) -> Lease:
    """The heartbeat: extend the lease, store progress and the seconds run so far (all
    attempts), and read the cancel flag."""
    job = _owned(session, job_id, worker)
    if job is None:
        return Lease(held=False)
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
    if run_seconds is not None:
        job.run_seconds = run_seconds
    if progress is not None:
        job.progress_epoch, job.progress_fraction = progress
    return Lease(held=True, cancel_requested=job.cancel_requested)


def record_epoch(session: Session, job_id: int, worker: str, metrics: EpochMetrics) -> bool:
    """Write one finished epoch (a rewrite of the same epoch replaces it). False: lease lost."""
    job = _owned(session, job_id, worker)
    if job is None:
        return False
    values = {"job_id": job_id, "recorded_at": utcnow(), **metrics.model_dump()}
    stmt = insert_for(session)(Epoch).values(values)
    updated = {k: stmt.excluded[k] for k in (*EPOCH_METRICS, "recorded_at")}
    session.execute(stmt.on_conflict_do_update(index_elements=["job_id", "epoch"], set_=updated))
    if values["epoch"] >= job.progress_epoch:  # a resume rewrites earlier epochs too
        job.progress_epoch, job.progress_fraction = values["epoch"], 1.0
    if metrics.quantizers:
        job.warnings = job_quantizer_warnings(session, job_id)
    return True


def finish_job(
    session: Session,
    job_id: int,
    worker: str,
    status: JobStatus,
    result: RunResult | None = None,
    error: str | None = None,
    stored_bytes: int | None = None,
    warning: str | None = None,
) -> bool:
    """End a job this worker owns as succeeded, failed or cancelled (cancelled, not succeeded,
    once its cancel was requested), with the bytes its files hold and a `warning` of its end
    (MLflow's, say). False: lease lost."""
    job = _owned(session, job_id, worker)
    if job is None:
        return False
    if status == JobStatus.succeeded and job.cancel_requested:
        # The run ended before it saw the flag: its owner asked it to stop, so it never succeeds.
        status, result = JobStatus.cancelled, None
    end(job, status, utcnow(), result=result.model_dump() if result else None, error=error)
    job.stored_bytes = stored_bytes
    if warning is not None:
        job.warnings = [*(job.warnings or []), clean_error(warning)]
    if status == JobStatus.succeeded:  # done, though the last progress beat may not be written
        job.progress_epoch, job.progress_fraction = max(job.progress_epoch, 1), 1.0
    return True


def release_job(session: Session, job_id: int, worker: str) -> bool:
    """Give a running job back to the queue (worker shutting down); it resumes elsewhere."""
    job = _owned(session, job_id, worker)
    if job is None:
        return False
    if job.cancel_requested:  # cancelled while stopping: end it rather than run it again
        end(job, JobStatus.cancelled, utcnow())
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


def stale_jobs(session: Session, before: datetime) -> tuple[list[int], list[int]]:
    """Jobs whose message may be lost (a broker restarted without its data): queued ones
    published before `before`, and running ones whose lease ran out before it (their worker
    died) and that were not published again since."""
    old = Job.published_at < before
    queued = select(Job.id).where(Job.status == JobStatus.queued, old)
    orphans = select(Job.id).where(
        Job.status == JobStatus.running, Job.lease_expires_at < before, old
    )
    return list(session.scalars(queued.order_by(Job.id))), list(
        session.scalars(orphans.order_by(Job.id))
    )


def unfinished_jobs(session: Session) -> list[Job]:
    """Queued and running jobs, oldest first: what a starting worker makes sure is queued."""
    query = select(Job).where(Job.status.in_([JobStatus.queued, JobStatus.running]))
    return list(session.scalars(query.order_by(Job.id)))


def prune_files(session: Session, ended_before: datetime, limit: int) -> list[str]:
    """Mark up to `limit` jobs that ended before `ended_before` as pruned (their rows and
    epochs stay; stored_bytes becomes 0) and return their folder names, for the caller to
    remove once this commits. Rows another worker is pruning right now are skipped (SKIP
    LOCKED on PostgreSQL; SQLite has one writer at a time), so workers sweeping at once never
    take the same job. A job whose model an unfinished job still uses keeps its files."""
    query = select(Job).where(
        Job.status.in_(FINISHED),
        Job.finished_at < ended_before,
        Job.files_pruned_at.is_(None),
    )
    if in_use := models_in_use(session):
        query = query.where(Job.id.not_in(in_use))
    query = query.order_by(Job.finished_at).limit(limit).with_for_update(skip_locked=True)
    jobs = list(session.scalars(query))
    # Looked up again now they are locked: a submission naming one of them (it holds its source
    # FOR SHARE) either committed meanwhile, and is seen here, or waits and then sees it pruned.
    in_use = models_in_use(session)
    jobs = [job for job in jobs if job.id not in in_use]
    now = utcnow()
    for job in jobs:
        job.files_pruned_at, job.stored_bytes = now, 0
    return folders(jobs)


def unmeasured_jobs(session: Session, limit: int) -> list[Job]:
    """Ended jobs whose files were never measured (stored_bytes), nor pruned."""
    query = select(Job).where(
        Job.status.in_(FINISHED), Job.stored_bytes.is_(None), Job.files_pruned_at.is_(None)
    )
    return list(session.scalars(query.order_by(Job.id).limit(limit)))


def _owned(session: Session, job_id: int, worker: str) -> Job | None:
    """The job, locked, while `worker` holds its lease; None once it has lost it."""
    job = locked(session, job_id)
    if job is None or job.status != JobStatus.running or job.worker != worker:
        return None
    return job
