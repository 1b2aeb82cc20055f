"""Experiments: store one (its row, its jobs, its Idempotency-Key, within the owner's limits),
read, list, cancel and delete it. What the jobs are, and the baseline's rules, are
api.service.experiments.plan's."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from api.service import owners
from api.service.errors import ExperimentNotFound, JobConflict
from api.service.experiments.plan import BaselineModel, FromJob, Plan, TrainedHere
from api.service.models import Experiment, Job
from api.service.owners import Limits
from api.service.store import uploads
from api.service.store.jobs import (
    Deleted,
    add_job,
    cancel_job,
    check_source,
    cursor_id,
    folders,
    is_id,
    refuse_models_in_use,
    within_limits,
)
from api.service.store.keys import EXPERIMENT_KEY, bind_key, digest, job_of_key
from lsq.spec import upgrade_spec


def stored_experiment_spec(experiment: Experiment) -> dict[str, Any]:
    """An experiment's request, its base upgraded as a job's spec is: submitted again, it
    plans the jobs it ran."""
    spec, base = experiment.spec, experiment.spec.get("base")
    if not isinstance(base, dict):
        return spec
    return {**spec, "base": upgrade_spec(base, experiment.spec_version)}


def create_experiment(
    session: Session,
    owner: str,
    name: str,
    request: dict[str, Any],
    plan: Plan,
    *,
    limits: Limits,
    key: str | None = None,
    key_expiry: timedelta = timedelta(days=1),
) -> tuple[Experiment, bool]:
    """Store an experiment and its planned jobs: the baseline to train (if any), then each
    variant's, starting from the baseline's model as `plan` says. For an Idempotency-Key seen
    before with the same request, the experiment it made (False)."""
    row = owners.lock(session, owner)  # before any job's row: the order workers lock in too
    if key is not None:  # keys of experiments and of jobs live apart
        key = f"{EXPERIMENT_KEY}{key}"
        earlier = job_of_key(session, owner, key, digest(request), key_expiry)
        if earlier is not None:
            return session.get(Experiment, earlier.experiment_id), False
    within_limits(session, row, limits, [spec for _, spec in plan.specs()], prefix="base.")
    experiment = Experiment(owner=owner, name=name, spec=request)
    session.add(experiment)
    session.flush()
    first = None
    for index, spec in plan.jobs_from(_baseline_model(session, owner, plan, experiment.id)):
        check_source(session, owner, spec)  # ids the base names: this owner's, existing
        spec = uploads.attach(session, owner, spec)
        job = add_job(session, owner, spec, experiment.id, index)
        first = first or job
    if key is not None:  # the key names the experiment through its first variant's job
        bind_key(session, owner, key, first.id)
    return experiment, True


def _baseline_model(session: Session, owner: str, plan: Plan, experiment_id: int) -> BaselineModel:
    """The model the variants start from: the baseline job stored now, when the plan trains
    one; else the plan's, an earlier job of the owner's checked as plan says a baseline must be."""
    source = plan.source
    if isinstance(source, TrainedHere):
        check_source(session, owner, source.spec)
        return FromJob(add_job(session, owner, source.spec, experiment_id, None).id)
    if isinstance(source, FromJob):
        plan.check_baseline_job(session.get(Job, source.job_id), owner)
    return source


def get_experiment(session: Session, experiment_id: int, owner: str | None) -> Experiment:
    """An experiment with its jobs; `owner` None: anybody's (for workers)."""
    if not is_id(experiment_id):
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
        query = query.where(Experiment.id < cursor_id(cursor))
    found = list(session.scalars(query.limit(limit + 1)))
    return found[:limit], (str(found[limit - 1].id) if len(found) > limit else None)


def cancel_experiment(session: Session, experiment_id: int, owner: str) -> Experiment:
    """Cancel every job of the experiment that has not ended."""
    experiment = get_experiment(session, experiment_id, owner)
    for job in experiment.jobs:
        if not job.status.finished:
            cancel_job(session, job.id, owner)
    return experiment


def delete_experiment(session: Session, experiment_id: int, owner: str) -> Deleted:
    """Delete a finished experiment of `owner` and all its jobs (as delete_job does)."""
    experiment = None
    if is_id(experiment_id):
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
    refuse_models_in_use(session, jobs)
    session.execute(delete(Job).where(Job.experiment_id == experiment_id))
    session.execute(delete(Experiment).where(Experiment.id == experiment_id))
    return Deleted(jobs=folders(jobs), experiments=folders([experiment]))
