"""What each owner may use, and what it uses: jobs queued and running, compute per job,
wall-clock time per job, and storage. An operator sets the defaults (LSQ_MAX_...) and, per
owner, overrides (`lsq owner limits OWNER ...`, stored in the `owners` table).

An owner's row is also its lock: a submission counts the owner's jobs and adds its own under
it, and so does a worker that starts one of its jobs, so two at once cannot both pass a limit
(PostgreSQL: the row lock; SQLite: the write lock every writing transaction takes).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.service.config import Settings
from api.service.db import insert_for
from api.service.models import UNFINISHED, Job, JobStatus, Owner, Upload


@dataclass(frozen=True)
class Limits:
    """An owner's bounds. max_running 0: as many as there are workers."""

    max_queued: int
    max_running: int
    max_job_tmacs: float
    max_job_seconds: float
    max_storage_bytes: int

    @classmethod
    def defaults(cls, settings: Settings) -> Limits:
        return cls(
            max_queued=settings.max_queued_per_owner,
            max_running=settings.max_running_per_owner,
            max_job_tmacs=settings.max_job_tmacs,
            max_job_seconds=settings.max_job_seconds,
            max_storage_bytes=settings.max_storage_bytes,
        )

    def overridden_by(self, row: Owner | None) -> Limits:
        """These defaults, with what the operator set for one owner in its place."""
        if row is None:
            return self
        changes = {f.name: getattr(row, f.name) for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


LIMIT_NAMES = tuple(f.name for f in fields(Limits))


@dataclass(frozen=True)
class Usage:
    queued: int
    running: int
    storage_bytes: int


def storage_full(owner: str, stored: int, limits: Limits) -> str | None:
    """Why `owner`, whose jobs hold `stored` bytes, may store no more; or None."""
    if stored < limits.max_storage_bytes:
        return None
    return (
        f"{owner}'s jobs and uploads hold {stored:,} bytes, the most allowed is "
        f"{limits.max_storage_bytes:,} (LSQ_MAX_STORAGE_BYTES): delete jobs or uploads to free "
        "space"
    )


def lock(session: Session, owner: str) -> Owner:
    """The owner's row, made if missing and locked until the transaction ends."""
    session.execute(insert_for(session)(Owner).values(owner=owner).on_conflict_do_nothing())
    row = session.get(Owner, owner, with_for_update=True, populate_existing=True)
    assert row is not None
    return row


def limits_of(session: Session, owner: str, defaults: Limits) -> Limits:
    """An owner's limits, read without a lock (for showing them)."""
    return defaults.overridden_by(session.get(Owner, owner))


def usage_of(session: Session, owner: str) -> Usage:
    """Jobs queued and running, and the bytes its jobs' folders held when they ended and its
    uploads hold."""
    counts = dict(
        session.execute(
            select(Job.status, func.count())
            .where(Job.owner == owner, Job.status.in_(UNFINISHED))
            .group_by(Job.status)
        ).all()
    )
    stored = select(func.coalesce(func.sum(Job.stored_bytes), 0)).where(Job.owner == owner)
    sent = select(func.coalesce(func.sum(Upload.size_bytes), 0)).where(Upload.owner == owner)
    return Usage(
        queued=counts.get(JobStatus.queued, 0),
        running=counts.get(JobStatus.running, 0),
        storage_bytes=int(session.scalar(stored) or 0) + int(session.scalar(sent) or 0),
    )


def try_lock(session: Session, owner: str) -> Owner | None:
    """The owner's row, locked, or None where another transaction holds its lock (a worker
    that chooses a job skips the owner rather than wait: two choosing at once never deadlock).
    Every owner of a job has a row (its submission made it, or migration 0012): a row is made
    here only if one is missing, since that insert would wait for another's."""
    if session.get(Owner, owner) is None:
        session.execute(insert_for(session)(Owner).values(owner=owner).on_conflict_do_nothing())
    lock = {"skip_locked": True}
    return session.get(Owner, owner, with_for_update=lock, populate_existing=True)
