"""Jobs: submit (within the owner's limits, from models the owner may use), read, list,
cancel and delete them; and the row-level helpers every part of the store shares (locking a
job, ending it, the ids and cursors a client may send)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, joinedload, load_only, object_session

from api.service import owners
from api.service.errors import InvalidField, JobConflict, JobNotFound, StorageFull, TooManyJobs
from api.service.job_spec import (
    MAX_JOB_ID,
    JobRef,
    ServiceJobSpec,
    has_a_model,
    named_models,
    pretrained_problem,
    source_jobs,
)
from api.service.models import (
    UNFINISHED,
    Epoch,
    Experiment,
    Job,
    JobStatus,
    Owner,
    utcnow,
)
from api.service.owners import Limits
from api.service.store import uploads
from api.service.store.keys import bind_key, digest, job_of_key
from lsq.cost import job_tmacs
from lsq.spec import upgrade_spec
from lsq.text import cut

# A folder is not read to cost a job: it counts as ImageNet-sized unless its subsets are given.
_UNCOUNTED = {
    "image_folder": " (an image folder counts as 1,281,167 training and 50,000 test images "
    "unless dataset.train_size and test_size say how many it holds)"
}


def submit_job(
    session: Session,
    owner: str,
    spec: ServiceJobSpec,
    *,
    limits: Limits,
    key: str | None = None,
    key_expiry: timedelta = timedelta(days=1),
) -> tuple[Job, bool]:
    """Add a queued job of `owner` within its limits (`limits`: the service's defaults), or,
    for an Idempotency-Key seen before with the same spec, return the job it created. True
    when the job is new."""
    row = owners.lock(session, owner)  # before any job's row: the order workers lock in too
    if key is not None:
        earlier = job_of_key(session, owner, key, digest(spec.model_dump(mode="json")), key_expiry)
        if earlier is not None:
            return earlier, False
    check_source(session, owner, spec)
    spec = uploads.attach(session, owner, spec)
    within_limits(session, row, limits, [spec])
    job = add_job(session, owner, spec)
    if key is not None:
        bind_key(session, owner, key, job.id)
    return job, True


def within_limits(
    session: Session, row: Owner, defaults: Limits, new: list[ServiceJobSpec], prefix: str = ""
) -> None:
    """Raise unless the owner of `row` (locked: concurrent submissions cannot both pass) may
    add the `new` jobs: unfinished jobs, compute per job (a 422 on `prefix` + the field that
    sets it), storage."""
    owner, limits = row.owner, defaults.overridden_by(row)
    usage = owners.usage_of(session, owner)
    if usage.queued + usage.running + len(new) > limits.max_queued:
        raise TooManyJobs(
            f"{len(new)} more would pass {owner}'s {limits.max_queued} unfinished jobs, "
            "the most allowed (LSQ_MAX_QUEUED_PER_OWNER)"
        )
    for spec in new:
        if (
            tmacs := job_tmacs(spec, uploads.network_of(session, owner, spec.model.upload))
        ) > limits.max_job_tmacs:
            raise InvalidField(
                prefix + ("sensitivity.layers" if spec.sensitivity else "training.epochs"),
                f"{spec.name!r} would take about {tmacs:,.4g} x 10^12 multiply-accumulates "
                f"(epochs x images x the network's cost), above {owner}'s limit of "
                f"{limits.max_job_tmacs:,.4g} (LSQ_MAX_JOB_TMACS): ask for fewer epochs or "
                "images" + _UNCOUNTED.get(spec.dataset.name, ""),
            )
    if problem := owners.storage_full(owner, usage.storage_bytes, limits):
        raise StorageFull(problem)


def check_source(session: Session, owner: str, spec: ServiceJobSpec) -> None:
    """A ``{job: ID}`` (model.init, the teacher) must name a job of the same owner that can
    still succeed."""
    for field, ref in named_models(spec).items():
        if ref == "pretrained" and (
            problem := pretrained_problem(field, spec.model.arch, spec.dataset.name)
        ):
            raise InvalidField(field, problem)  # checked here, not in the spec: stored ones stay
        if not isinstance(ref, JobRef):
            continue
        source_id = ref.job
        # FOR SHARE: the source cannot be deleted or pruned until this submission commits
        source = session.get(Job, source_id, with_for_update={"read": True}, populate_existing=True)
        if source is None or source.owner != owner:
            raise InvalidField(f"{field}.job", f"job {source_id} does not exist")
        has_a_model(f"{field}.job", source, spec)


def stored_spec(job: Job) -> dict[str, Any]:
    """A job's spec document, upgraded to the current version of lsq.spec (never re-validated
    here: a stored spec stays readable whatever the current model accepts)."""
    return upgrade_spec(job.spec, job.spec_version)


def spec_of(job: Job) -> ServiceJobSpec:
    """A job's stored spec as it ran: upgraded to this version, then read as a spec."""
    return ServiceJobSpec.model_validate(stored_spec(job))


def get_job(
    session: Session, job_id: int, *, owner: str | None = None, with_epochs: bool = False
) -> Job:
    """A job by id; with `owner`, a job of anybody else is as missing as one that never was."""
    if not is_id(job_id):
        raise JobNotFound(job_id)
    query = select(Job).where(Job.id == job_id)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if with_epochs:  # one query: the job joined with its epochs
        query = query.options(joinedload(Job.epochs).defer(Epoch.quantizers))
    job = session.scalars(query).unique().one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(
    session: Session,
    owner: str,
    *,
    status: JobStatus | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first. The cursor is the last id of the previous page: ids only grow, so jobs
    added meanwhile land before page one and never shift later pages."""
    query = select(Job).where(Job.owner == owner).order_by(Job.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        query = query.where(Job.id < cursor_id(cursor))
    jobs = list(session.scalars(query))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, (str(jobs[-1].id) if more else None)


def cancel_job(session: Session, job_id: int, owner: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged and stops at the next batch
    boundary (its worker reads the flag). Cancelling a cancelled job changes nothing."""
    job = locked(session, job_id)
    if job is None or job.owner != owner:
        raise JobNotFound(job_id)
    now = utcnow()
    if job.status == JobStatus.queued:
        end(job, JobStatus.cancelled, now)
    elif job.status == JobStatus.running and (job.lease_expires_at or now) <= now:
        end(job, JobStatus.cancelled, now)  # its worker is gone: nobody would read the flag
    elif job.status == JobStatus.running:
        job.cancel_requested = True
    elif job.status != JobStatus.cancelled:
        raise JobConflict(f"job {job_id} already {job.status}; only queued or running jobs stop")
    return job


def add_job(
    session: Session,
    owner: str,
    spec: ServiceJobSpec,
    experiment_id: int | None = None,
    variant: int | None = None,
) -> Job:
    """A new queued job, its id assigned."""
    job = Job(owner=owner, name=spec.name, spec=spec.model_dump(mode="json"))
    job.status, job.experiment_id, job.variant = JobStatus.queued, experiment_id, variant
    job.compute_tmacs = job_tmacs(spec, uploads.network_of(session, owner, spec.model.upload))
    session.add(job)
    session.flush()
    return job


@dataclass(frozen=True)
class Deleted:
    """The folder names of what left the database: the caller removes these folders once the
    transaction has committed (a crash between leaves orphan files, never rows whose files
    are gone)."""

    jobs: list[str]
    experiments: list[str]


def delete_job(session: Session, job_id: int, owner: str) -> Deleted:
    """Delete a finished job of `owner` (its epochs and Idempotency-Keys go with it: the
    foreign keys cascade). Refused while it runs, while it belongs to an experiment, and while
    an unfinished job uses its model."""
    job = locked(session, job_id)
    if job is None or job.owner != owner:
        raise JobNotFound(job_id)
    if job.experiment_id is not None:
        raise JobConflict(
            f"job {job_id} belongs to experiment {job.experiment_id}; it is deleted with it "
            f"(DELETE /v1/experiments/{job.experiment_id})"
        )
    if not job.status.finished:
        raise JobConflict(
            f"job {job_id} is {job.status}; cancel it first (POST /v1/jobs/{job_id}/cancel), "
            "then delete it"
        )
    refuse_models_in_use(session, [job])
    session.execute(delete(Job).where(Job.id == job_id))
    return Deleted(jobs=folders([job]), experiments=[])


def refuse_models_in_use(session: Session, jobs: list[Job]) -> None:
    """A job whose model a queued or running job uses keeps it until that job has ended."""
    in_use = models_in_use(session, jobs[0].owner if jobs else None)
    for job in jobs:
        if (user := in_use.get(job.id)) is not None:
            raise JobConflict(
                f"job {user} (not ended) uses the model of job {job.id}; cancel it or let it "
                "end first"
            )


def models_in_use(session: Session, owner: str | None = None) -> dict[int, int]:
    """Id of each job whose model a queued or running job (of `owner`) uses -> that job."""
    query = select(Job).where(Job.status.in_(UNFINISHED)).order_by(Job.id)
    if owner is not None:  # a job only ever uses models of its own owner (check_source)
        query = query.where(Job.owner == owner)
    users: dict[int, int] = {}
    for job in session.scalars(query.options(load_only(Job.id, Job.spec, Job.spec_version))):
        for source in source_jobs(stored_spec(job)).values():
            users.setdefault(source, job.id)
    return users


def folders(rows: list[Job] | list[Experiment]) -> list[str]:
    return [row.folder for row in rows if row.folder]  # always set since migration 0012


def cursor_id(cursor: str) -> int:
    if not re.fullmatch(r"[0-9]{1,10}", cursor) or int(cursor) > MAX_JOB_ID:
        raise InvalidField("cursor", "not a cursor returned by this API (next_cursor)")
    return int(cursor)


def is_id(job_id: int) -> bool:
    """Larger ids name no job, and must not reach SQLite, whose driver overflows on them."""
    return 1 <= job_id <= MAX_JOB_ID


def locked(session: Session, job_id: int) -> Job | None:
    if not is_id(job_id):
        return None
    return session.get(Job, job_id, with_for_update=True, populate_existing=True)


def end(
    job: Job,
    status: JobStatus,
    now: datetime,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    job.status, job.finished_at, job.lease_expires_at = status, now, None
    job.result, job.error = result, clean_error(error)
    if status != JobStatus.succeeded and job.experiment_id is not None and job.variant is None:
        _cancel_variants(job, now)


def _cancel_variants(baseline: Job, now: datetime) -> None:
    """The variants of a baseline that will have no model: cancelled, saying why."""
    session = object_session(baseline)
    assert session is not None
    waiting = select(Job).where(
        Job.experiment_id == baseline.experiment_id,
        Job.variant.is_not(None),
        Job.status == JobStatus.queued,
    )
    for job in session.scalars(waiting):
        job.status, job.finished_at = JobStatus.cancelled, now
        job.error = f"the experiment's baseline, job {baseline.id}, ended {baseline.status}"


MAX_ERROR = 4000


def clean_error(text: str | None) -> str | None:
    """An error message any database stores: no control characters but newlines and tabs
    (PostgreSQL refuses NUL), at most MAX_ERROR characters."""
    if text is None:
        return None
    text = "".join(c if c in "\n\t" or (ord(c) >= 32 and ord(c) != 127) else "?" for c in text)
    return cut(text, MAX_ERROR)
