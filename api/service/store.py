"""Every query of the service. The API and the worker both go through these functions.

Functions take a Session and leave committing to the caller (one short transaction each:
``api.service.db.session_scope`` or the API's per-request session). Worker-side writes are
guarded by the lease: they only touch a job that is ``running`` under that worker's name, so a
worker that lost its job (its lease expired and another took over) cannot overwrite anything.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import (
    Session,
    defer,
    joinedload,
    load_only,
    object_session,
    selectinload,
)

from api.service import owners
from api.service.db import insert_for
from api.service.errors import (
    ExperimentNotFound,
    InvalidField,
    JobConflict,
    JobNotFound,
    KeyInUse,
    StorageFull,
    TooManyJobs,
)
from api.service.job_spec import MAX_JOB_ID, JobRef, ServiceJobSpec, named_models, source_jobs
from api.service.models import (
    EPOCH_METRICS,
    EPOCH_NUMBERS,
    FINISHED,
    UNFINISHED,
    Epoch,
    Experiment,
    IdempotencyKey,
    Job,
    JobStatus,
    Owner,
    utcnow,
)
from api.service.owners import Limits
from lsq.archs import pretrained_missing
from lsq.cost import job_tmacs
from lsq.metrics import EpochMetrics, QuantizerHealth, RunResult, quantizer_warnings
from lsq.spec import upgrade_spec
from lsq.text import cut

# An experiment's Idempotency-Key is stored after this prefix. A header key cannot hold a
# space, so no job's key equals it (migration 0010 moved keys stored under "experiment:").
EXPERIMENT_KEY = "experiment "


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
        earlier = _job_of_key(
            session, owner, key, _digest(spec.model_dump(mode="json")), key_expiry
        )
        if earlier is not None:
            return earlier, False
    _check_source(session, owner, spec)
    _within_limits(session, row, limits, [spec])
    job = _add(session, owner, spec)
    if key is not None:
        _bind_key(session, owner, key, job.id)
    return job, True


def _within_limits(
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
        if (tmacs := job_tmacs(spec)) > limits.max_job_tmacs:
            raise InvalidField(
                prefix + ("sensitivity.layers" if spec.sensitivity else "training.epochs"),
                f"{spec.name!r} would take about {tmacs:,.4g} x 10^12 multiply-accumulates "
                f"(epochs x images x the network's cost), above {owner}'s limit of "
                f"{limits.max_job_tmacs:,.4g} (LSQ_MAX_JOB_TMACS): ask for fewer epochs or "
                "images",
            )
    if problem := owners.storage_full(owner, usage.storage_bytes, limits):
        raise StorageFull(problem)


def _check_source(session: Session, owner: str, spec: ServiceJobSpec) -> None:
    """A ``{job: ID}`` (model.init, the teacher) must name a job of the same owner that can
    still succeed."""
    for field, ref in named_models(spec).items():
        if ref == "pretrained" and (problem := pretrained_missing(spec.model.arch)):
            raise InvalidField(field, problem)  # checked here, not in the spec: stored ones stay
        if not isinstance(ref, JobRef):
            continue
        source_id = ref.job
        # FOR SHARE: the source cannot be deleted or pruned until this submission commits
        source = session.get(Job, source_id, with_for_update={"read": True}, populate_existing=True)
        if source is None or source.owner != owner:
            raise InvalidField(f"{field}.job", f"job {source_id} does not exist")
        _has_a_model(f"{field}.job", source, spec)


def _has_a_model(field: str, source: Job, spec: ServiceJobSpec) -> None:
    """A job whose model `spec`'s job may start from (or learn from): not ended without one,
    not a probe, the same network on the same data (so its layers' shapes fit)."""
    if source.status in (JobStatus.failed, JobStatus.cancelled):
        raise InvalidField(field, f"job {source.id} ended {source.status}; it has no model to use")
    if source.files_pruned_at is not None:
        raise InvalidField(field, f"job {source.id}'s files were removed (retention); no model")
    if source.spec.get("sensitivity"):
        raise InvalidField(field, f"job {source.id} is a sensitivity probe; it writes no model")
    arch, data = (
        source.spec.get("model", {}).get("arch"),
        source.spec.get("dataset", {}).get("name"),
    )
    if arch != spec.model.arch:
        raise InvalidField(field, f"job {source.id} is a {arch}, not a {spec.model.arch}")
    if data != spec.dataset.name:
        raise InvalidField(field, f"job {source.id} is on {data}, not {spec.dataset.name}")


def _digest(body: dict[str, Any]) -> str:
    """What an Idempotency-Key's request is compared by: its JSON, keys sorted."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _bind_key(session: Session, owner: str, key: str, job_id: int) -> None:
    """The key now names `job_id`: a repeated request finds it."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
        .values(job_id=job_id)
    )


def _job_of_key(
    session: Session, owner: str, key: str, body_hash: str, expiry: timedelta
) -> Job | None:
    """Claim `key` for a new job (None), or return the job an earlier request made with it."""
    now = utcnow()
    session.execute(  # an expired key is forgotten
        delete(IdempotencyKey).where(
            IdempotencyKey.owner == owner,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < now - expiry,
        )
    )
    insert = insert_for(session)(IdempotencyKey).values(
        owner=owner, key=key, body_hash=body_hash, created_at=now
    )
    # A concurrent first request holds the row until it commits; this waits for it.
    inserted = insert.on_conflict_do_nothing().returning(IdempotencyKey.key)
    if session.execute(inserted).scalar() is not None:
        return None
    row = session.get(IdempotencyKey, (owner, key), populate_existing=True)
    if row is None or row.job_id is None:
        raise KeyInUse("a request with this Idempotency-Key is still being handled; retry")
    if row.body_hash != body_hash:
        raise InvalidField(
            "Idempotency-Key", "already used with a different body; use a new key for a new job"
        )
    return session.get(Job, row.job_id)


def stored_spec(job: Job) -> dict[str, Any]:
    """A job's spec document, upgraded to the current version of lsq.spec (never re-validated
    here: a stored spec stays readable whatever the current model accepts)."""
    return upgrade_spec(job.spec, job.spec_version)


def spec_of(job: Job) -> ServiceJobSpec:
    """A job's stored spec as it ran: upgraded to this version, then read as a spec."""
    return ServiceJobSpec.model_validate(stored_spec(job))


def stored_experiment_spec(experiment: Experiment) -> dict[str, Any]:
    """An experiment's request, its base upgraded as a job's spec is: submitted again, it
    plans the jobs it ran."""
    spec, base = experiment.spec, experiment.spec.get("base")
    if not isinstance(base, dict):
        return spec
    return {**spec, "base": upgrade_spec(base, experiment.spec_version)}


def get_job(
    session: Session, job_id: int, *, owner: str | None = None, with_epochs: bool = False
) -> Job:
    """A job by id; with `owner`, a job of anybody else is as missing as one that never was."""
    if not _is_id(job_id):
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
        query = query.where(Job.id < _cursor(cursor))
    jobs = list(session.scalars(query))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, (str(jobs[-1].id) if more else None)


def list_epochs(
    session: Session, job_id: int, owner: str | None = None, *, health: bool = False
) -> list[Epoch]:
    """A job's epochs, in order; their quantizer health (a larger column) only with `health`."""
    get_job(session, job_id, owner=owner)
    query = select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)
    return list(session.scalars(query if health else query.options(defer(Epoch.quantizers))))


def _quantizer_warnings(session: Session, job_id: int) -> list[str]:
    """What the quantizer health of a job's first and last three epochs says is wrong."""
    numbers = select(Epoch.epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)
    epochs = list(session.scalars(numbers))
    wanted = sorted({*epochs[:1], *epochs[-3:]})
    query = select(Epoch.quantizers).where(Epoch.job_id == job_id, Epoch.epoch.in_(wanted))
    rows = [q for q in session.scalars(query.order_by(Epoch.epoch)) if q]
    return quantizer_warnings([[QuantizerHealth.model_validate(h) for h in e] for e in rows])


def cancel_job(session: Session, job_id: int, owner: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged and stops at the next batch
    boundary (its worker reads the flag). Cancelling a cancelled job changes nothing."""
    job = _locked(session, job_id)
    if job is None or job.owner != owner:
        raise JobNotFound(job_id)
    now = utcnow()
    if job.status == JobStatus.queued:
        _end(job, JobStatus.cancelled, now)
    elif job.status == JobStatus.running and (job.lease_expires_at or now) <= now:
        _end(job, JobStatus.cancelled, now)  # its worker is gone: nobody would read the flag
    elif job.status == JobStatus.running:
        job.cancel_requested = True
    elif job.status != JobStatus.cancelled:
        raise JobConflict(f"job {job_id} already {job.status}; only queued or running jobs stop")
    return job


def create_experiment(
    session: Session,
    owner: str,
    name: str,
    request: dict[str, Any],
    baseline: ServiceJobSpec | None,
    variants: list[tuple[int, ServiceJobSpec]],
    *,
    start: int | str | None,
    limits: Limits,
    distill: dict[str, float] | None = None,
    key: str | None = None,
    key_expiry: timedelta = timedelta(days=1),
) -> tuple[Experiment, bool]:
    """Store an experiment and its jobs: the baseline to train (if any), then each variant's,
    starting from `start` (the baseline's job id, or a model path) unless it is None, and with
    `distill`, taught by it. For an Idempotency-Key seen before with the same request, the
    experiment it made (False)."""
    row = owners.lock(session, owner)  # before any job's row: the order workers lock in too
    if key is not None:  # keys of experiments and of jobs live apart
        key = f"{EXPERIMENT_KEY}{key}"
        earlier = _job_of_key(session, owner, key, _digest(request), key_expiry)
        if earlier is not None:
            return session.get(Experiment, earlier.experiment_id), False
    planned = [s for s in [baseline] if s is not None] + [s for _, s in variants]
    _within_limits(session, row, limits, planned, prefix="base.")
    experiment = Experiment(owner=owner, name=name, spec=request)
    session.add(experiment)
    session.flush()
    if baseline is not None:
        _check_source(session, owner, baseline)
        start = _add(session, owner, baseline, experiment.id, None).id
    elif isinstance(start, int):
        _check_baseline_job(session, owner, start, variants[0][1])
    first = None
    for index, spec in variants:
        init = {"job": start} if isinstance(start, int) else start
        data = spec.model_dump(mode="json")
        data["model"]["init"] = init
        if distill is not None:
            data["training"]["distill"] = {**distill, "teacher": init}
        spec = ServiceJobSpec.model_validate(data)
        _check_source(session, owner, spec)  # ids the base names: this owner's, existing
        job = _add(session, owner, spec, experiment.id, index)
        first = first or job
    if key is not None:  # the key names the experiment through its first variant's job
        _bind_key(session, owner, key, first.id)
    return experiment, True


def _check_baseline_job(session: Session, owner: str, job_id: int, variant: ServiceJobSpec) -> None:
    """A baseline job is the owner's, succeeded, full precision, with a model to start from."""
    source = session.get(Job, job_id)
    if source is None or source.owner != owner:
        raise InvalidField("baseline.job", f"job {job_id} does not exist")
    if source.status != JobStatus.succeeded:
        raise InvalidField("baseline.job", f"job {job_id} is {source.status}, not succeeded")
    _has_a_model("baseline.job", source, variant)
    if _quantized(source):
        raise InvalidField("baseline.job", f"job {job_id} is quantized; a baseline is the "
                           "full-precision model the variants start from")  # fmt: skip


def _quantized(job: Job) -> bool:
    """Whether the job's stored spec quantizes anything (one the current model refuses reads as
    quantized: it cannot be shown as full precision)."""
    try:
        return spec_of(job).quantization.enabled
    except ValidationError:
        return True


def _add(
    session: Session,
    owner: str,
    spec: ServiceJobSpec,
    experiment_id: int | None = None,
    variant: int | None = None,
) -> Job:
    """A new queued job, its id assigned."""
    job = Job(owner=owner, name=spec.name, spec=spec.model_dump(mode="json"))
    job.status, job.experiment_id, job.variant = JobStatus.queued, experiment_id, variant
    job.compute_tmacs = job_tmacs(spec)
    session.add(job)
    session.flush()
    return job


def get_experiment(session: Session, experiment_id: int, owner: str | None) -> Experiment:
    """An experiment with its jobs; `owner` None: anybody's (for workers)."""
    if not _is_id(experiment_id):
        raise ExperimentNotFound(experiment_id)
    query = select(Experiment).where(Experiment.id == experiment_id)
    if owner is not None:
        query = query.where(Experiment.owner == owner)
    experiment = session.scalars(query.options(selectinload(Experiment.jobs))).one_or_none()
    if experiment is None:
        raise ExperimentNotFound(experiment_id)
    return experiment


def list_experiments(
    session: Session, owner: str, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[Experiment], str | None]:
    """Newest first, paged like list_jobs."""
    query = select(Experiment).where(Experiment.owner == owner)
    query = query.options(selectinload(Experiment.jobs)).order_by(Experiment.id.desc())
    if cursor is not None:
        query = query.where(Experiment.id < _cursor(cursor))
    found = list(session.scalars(query.limit(limit + 1)))
    return found[:limit], (str(found[limit - 1].id) if len(found) > limit else None)


def cancel_experiment(session: Session, experiment_id: int, owner: str) -> Experiment:
    """Cancel every job of the experiment that has not ended."""
    experiment = get_experiment(session, experiment_id, owner)
    for job in experiment.jobs:
        if not job.status.finished:
            cancel_job(session, job.id, owner)
    return experiment


# ------------------------------------------------------------------- deletion and retention


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
    job = _locked(session, job_id)
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
    _refuse_models_in_use(session, [job])
    session.execute(delete(Job).where(Job.id == job_id))
    return Deleted(jobs=_folders([job]), experiments=[])


def delete_experiment(session: Session, experiment_id: int, owner: str) -> Deleted:
    """Delete a finished experiment of `owner` and all its jobs (as delete_job does)."""
    experiment = None
    if _is_id(experiment_id):
        experiment = session.get(
            Experiment, experiment_id, with_for_update=True, populate_existing=True
        )
    if experiment is None or experiment.owner != owner:
        raise ExperimentNotFound(experiment_id)
    query = select(Job).where(Job.experiment_id == experiment_id).order_by(Job.id)
    jobs = list(session.scalars(query.with_for_update().execution_options(populate_existing=True)))
    if running := [job.id for job in jobs if not job.status.finished]:
        raise JobConflict(
            f"experiment {experiment_id} has jobs still queued or running "
            f"({', '.join(map(str, running))}); cancel it first "
            f"(POST /v1/experiments/{experiment_id}/cancel), then delete it"
        )
    _refuse_models_in_use(session, jobs)
    session.execute(delete(Job).where(Job.experiment_id == experiment_id))
    session.execute(delete(Experiment).where(Experiment.id == experiment_id))
    return Deleted(jobs=_folders(jobs), experiments=_folders([experiment]))


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
    if in_use := _models_in_use(session):
        query = query.where(Job.id.not_in(in_use))
    query = query.order_by(Job.finished_at).limit(limit).with_for_update(skip_locked=True)
    jobs = list(session.scalars(query))
    # Looked up again now they are locked: a submission naming one of them (it holds its source
    # FOR SHARE) either committed meanwhile, and is seen here, or waits and then sees it pruned.
    in_use = _models_in_use(session)
    jobs = [job for job in jobs if job.id not in in_use]
    now = utcnow()
    for job in jobs:
        job.files_pruned_at, job.stored_bytes = now, 0
    return _folders(jobs)


def unmeasured_jobs(session: Session, limit: int) -> list[Job]:
    """Ended jobs whose files were never measured (stored_bytes), nor pruned."""
    query = select(Job).where(
        Job.status.in_(FINISHED), Job.stored_bytes.is_(None), Job.files_pruned_at.is_(None)
    )
    return list(session.scalars(query.order_by(Job.id).limit(limit)))


def _refuse_models_in_use(session: Session, jobs: list[Job]) -> None:
    """A job whose model a queued or running job uses keeps it until that job has ended."""
    in_use = _models_in_use(session, jobs[0].owner if jobs else None)
    for job in jobs:
        if (user := in_use.get(job.id)) is not None:
            raise JobConflict(
                f"job {user} (not ended) uses the model of job {job.id}; cancel it or let it "
                "end first"
            )


def _models_in_use(session: Session, owner: str | None = None) -> dict[int, int]:
    """Id of each job whose model a queued or running job (of `owner`) uses -> that job."""
    query = select(Job).where(Job.status.in_(UNFINISHED)).order_by(Job.id)
    if owner is not None:  # a job only ever uses models of its own owner (_check_source)
        query = query.where(Job.owner == owner)
    users: dict[int, int] = {}
    for job in session.scalars(query.options(load_only(Job.id, Job.spec, Job.spec_version))):
        for source in source_jobs(stored_spec(job)).values():
            users.setdefault(source, job.id)
    return users


def _folders(rows: list[Job] | list[Experiment]) -> list[str]:
    return [row.folder for row in rows if row.folder]  # always set since migration 0012


# ------------------------------------------------------------------------------- worker side


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
        # a worker died when the next claim took the job over from it; so did the current one
        history = job.history
        died = [a["worker"] for a, b in itertools.pairwise(history) if b["took_over"]]
        died.append(job.worker)
        if len(died) >= max_takeovers:
            _end(job, JobStatus.failed, now, error=_gave_up(died))
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
        job.warnings = _quantizer_warnings(session, job_id)
    return True


def finish_job(
    session: Session,
    job_id: int,
    worker: str,
    status: JobStatus,
    result: RunResult | None = None,
    error: str | None = None,
    stored_bytes: int | None = None,
) -> bool:
    """End a job this worker owns as succeeded, failed or cancelled (cancelled, not succeeded,
    once its cancel was requested), with the bytes its files hold. False: lease lost."""
    job = _owned(session, job_id, worker)
    if job is None:
        return False
    if status == JobStatus.succeeded and job.cancel_requested:
        # The run ended before it saw the flag: its owner asked it to stop, so it never succeeds.
        status, result = JobStatus.cancelled, None
    _end(job, status, utcnow(), result=result.model_dump() if result else None, error=error)
    job.stored_bytes = stored_bytes
    if status == JobStatus.succeeded:  # done, though the last progress beat may not be written
        job.progress_epoch, job.progress_fraction = max(job.progress_epoch, 1), 1.0
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


# ---------------------------------------------------------------------------------- helpers


def _cursor(cursor: str) -> int:
    if not re.fullmatch(r"[0-9]{1,10}", cursor) or int(cursor) > MAX_JOB_ID:
        raise InvalidField("cursor", "not a cursor returned by this API (next_cursor)")
    return int(cursor)


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


def epoch_numbers(epoch: Epoch) -> EpochMetrics:
    """An epoch without its quantizer health (GET /v1/jobs/{id}/quantizers has it)."""
    return EpochMetrics.model_validate({k: getattr(epoch, k) for k in ("epoch", *EPOCH_NUMBERS)})


def epochs_of(session: Session, job_ids: list[int]) -> dict[int, list[EpochMetrics]]:
    """The numbers of every epoch of these jobs (no quantizer health), by job, in order."""
    query = select(Epoch).where(Epoch.job_id.in_(job_ids)).order_by(Epoch.job_id, Epoch.epoch)
    numbers = load_only(*(getattr(Epoch, n) for n in ("job_id", "epoch", *EPOCH_NUMBERS)))
    epochs: dict[int, list[EpochMetrics]] = {}
    for e in session.scalars(query.options(numbers)):
        epochs.setdefault(e.job_id, []).append(epoch_numbers(e))
    return epochs
