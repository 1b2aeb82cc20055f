"""Which job a free worker runs: dispatch is fair between owners.

A free worker takes the next job of the owner with the fewest jobs running, and among equals
the one whose last job started longest ago (round robin), whatever message woke it. So one
owner's hundred queued jobs hold another's first job back by at most one job per worker, not
by a hundred. A message is a turn for whichever job is fairest; the job it names, if still
queued, gets a new message (worker.runner).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from api.service import owners
from api.service.job_spec import source_jobs
from api.service.models import UNFINISHED, Job, JobStatus, utcnow
from api.service.owners import Limits
from api.service.store import jobs as job_store
from api.service.store import worker as worker_store

PAGE = 50  # an owner's candidates read at a time
TRIES = 20  # jobs another worker claimed first, before giving up the turn


def claim_next(
    session: Session, worker: str, lease_seconds: float, max_takeovers: int, defaults: Limits
) -> Job | None:
    """Claim the fairest job that can run now (see above): a queued one not waiting for the
    model of another, or a running one whose worker died. None: no such job, or its owner is
    at its running limit."""
    skipped: set[int] = set()
    for _ in range(TRIES):
        job_id = _fairest(session, utcnow(), defaults, skipped)
        if job_id is None:
            return None
        claim = worker_store.claim_job(session, job_id, worker, lease_seconds, max_takeovers)
        if claim.outcome == "claimed":
            return claim.job
        skipped.add(job_id)  # another worker was first, or it ended: the next one
    return None


def _fairest(session: Session, now: datetime, defaults: Limits, skipped: set[int]) -> int | None:
    """The id of the job a free worker should run now, by the rule above."""
    can_run = (Job.status == JobStatus.queued) | (
        (Job.status == JobStatus.running)
        & (Job.lease_expires_at.is_(None) | (Job.lease_expires_at <= now))
    )
    if skipped:
        can_run &= Job.id.not_in(skipped)
    waiting = list(session.scalars(select(Job.owner).where(can_run).distinct()))
    if not waiting:
        return None
    for owner in sorted(waiting, key=_turn_order(session, now, waiting)):
        row = owners.try_lock(session, owner)  # None: another worker is choosing for it now
        limits = defaults.overridden_by(row)
        # counted again under the lock: another worker may have started one of its jobs
        if row is None or (
            limits.max_running and _running(session, owner, now) >= limits.max_running
        ):
            continue
        if (job_id := _first_ready(session, owner, can_run)) is not None:
            return job_id
    return None


def _first_ready(session: Session, owner: str, can_run: ColumnElement[bool]) -> int | None:
    """The owner's oldest job that can run and waits for no other job's model, looking at
    all of them a page at a time (an experiment's variants waiting for their baseline must not
    hide a job behind them)."""
    after = 0
    while True:
        page = select(Job).where(Job.owner == owner, can_run, Job.id > after)
        jobs = list(session.scalars(page.order_by(Job.id).limit(PAGE)))
        for job in jobs:
            if not _waits(session, job):
                return job.id
        if len(jobs) < PAGE:
            return None
        after = jobs[-1].id


def _turn_order(
    session: Session, now: datetime, owners_: list[str]
) -> Callable[[str], tuple[int, datetime, str]]:
    """Owners with fewer running jobs first, then the one whose last start is oldest."""
    running = dict(
        session.execute(
            select(Job.owner, func.count())
            .where(_alive(now), Job.owner.in_(owners_))
            .group_by(Job.owner)
        ).all()
    )
    started = dict(
        session.execute(
            select(Job.owner, func.max(Job.started_at))
            .where(Job.owner.in_(owners_), Job.started_at.is_not(None))
            .group_by(Job.owner)
        ).all()
    )
    never = datetime.min.replace(tzinfo=now.tzinfo)
    return lambda owner: (running.get(owner, 0), started.get(owner) or never, owner)


def _alive(now: datetime) -> ColumnElement[bool]:
    """Running, on a worker that renews its lease."""
    return (Job.status == JobStatus.running) & (Job.lease_expires_at > now)


def _running(session: Session, owner: str, now: datetime) -> int:
    return session.scalar(select(func.count()).where(Job.owner == owner, _alive(now))) or 0


def _waits(session: Session, job: Job) -> bool:
    """A queued job waits while a job whose model it uses may still succeed (a source that
    cannot, or is not its owner's, lets it run: it then fails, saying why)."""
    if job.status != JobStatus.queued:
        return False
    ids = list(source_jobs(job_store.stored_spec(job)).values())
    statuses = dict(
        session.execute(
            select(Job.id, Job.status).where(Job.id.in_(ids), Job.owner == job.owner)
        ).all()
    )
    found = [statuses.get(i) for i in ids]
    doomed = any(s not in (*UNFINISHED, JobStatus.succeeded) for s in found)
    return not doomed and any(s in UNFINISHED for s in found)
