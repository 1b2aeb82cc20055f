"""/v1/experiments: a baseline and a grid of quantized variants in one request, read back as
the results table (JSON, Markdown or CSV) and a plot."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse

from api.service import artifacts, limits
from api.service.db import session_scope
from api.service.errors import InvalidField
from api.service.experiments.plan import FromCheckpoint, plan
from api.service.experiments.request import ExperimentSpec
from api.service.experiments.results import rows
from api.service.experiments.tables import csv_text, markdown
from api.service.models import Experiment
from api.service.owners import Limits
from api.service.queue import enqueue_when_committed
from api.service.store import experiments as experiment_store
from api.web.auth import OwnerDep
from api.web.deps import ReadSessionDep, SettingsDep
from api.web.routes.jobs import ERRORS, IdempotencyKey, submitted
from api.web.schemas import ErrorOut, ExperimentOut, ExperimentPage, ExperimentSummary
from lsq.files import PLOT, PLOT_SVG

NOT_FOUND = {404: {"model": ErrorOut, "description": "No experiment with this id"}}
router = APIRouter(prefix="/v1/experiments", tags=["experiments"], responses=ERRORS)


def _out(experiment: Experiment) -> ExperimentOut:
    spec = ExperimentSpec.model_validate(experiment_store.stored_experiment_spec(experiment))
    return ExperimentOut.of(experiment, rows(spec, experiment.jobs))


@router.post(
    "", status_code=201, summary="Submit an experiment", responses=submitted(ExperimentOut)
)
def submit_experiment(
    spec: ExperimentSpec,
    owner: OwnerDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ExperimentOut:
    """A baseline (`{train: true}`, `{job: ID}`, `{checkpoint: PATH}` or `{pretrained: true}`)
    and variants of the base spec (`grid` of dotted paths, crossed, or `variants` one by one),
    each once per seed."""
    planned = plan(spec, settings.max_experiment_jobs)
    for where, job in planned.specs():
        try:
            limits.check_job(job, settings)
        except InvalidField as e:
            raise InvalidField(f"{where}.{e.field}", str(e)) from None
    if isinstance(planned.source, FromCheckpoint):
        limits.check_file("baseline.checkpoint", planned.source.path, settings)
    with session_scope() as session:  # writes commit in this thread (api.web.deps)
        experiment, new = experiment_store.create_experiment(
            session, owner, spec.name, spec.model_dump(mode="json"), planned,
            limits=Limits.defaults(settings), key=idempotency_key,
            key_expiry=timedelta(seconds=settings.idempotency_seconds),
        )  # fmt: skip
        session.flush()
        session.refresh(experiment)
        if new:
            for job in experiment.jobs:
                enqueue_when_committed(session, job.id)
        body = _out(experiment)
    response.status_code = 201 if new else 200
    response.headers["Location"] = f"/v1/experiments/{body.id}"
    return body


@router.get("", summary="List experiments, newest first")
def list_experiments(
    session: ReadSessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> ExperimentPage:
    found, next_cursor = experiment_store.list_experiments(
        session, owner, limit=limit, cursor=cursor
    )
    return ExperimentPage(items=[ExperimentSummary.of(e) for e in found], next_cursor=next_cursor)


@router.get(
    "/{experiment_id}",
    summary="An experiment: its jobs and the results table",
    responses={
        **NOT_FOUND,
        200: {"content": {"text/markdown": {}, "text/csv": {}}},
    },
)
def get_experiment(
    experiment_id: int,
    session: ReadSessionDep,
    owner: OwnerDep,
    format: Annotated[
        Literal["json", "md", "csv"],
        Query(description="md or csv: the table alone, in the reference's columns"),
    ] = "json",
) -> ExperimentOut:
    experiment = experiment_store.get_experiment(session, experiment_id, owner)
    body = _out(experiment)
    if format == "md":
        return PlainTextResponse(markdown(body.rows), media_type="text/markdown")
    if format == "csv":
        return PlainTextResponse(csv_text(body.rows), media_type="text/csv")
    return body


@router.post("/{experiment_id}/cancel", responses=NOT_FOUND, summary="Cancel an experiment")
def cancel_experiment(experiment_id: int, owner: OwnerDep) -> ExperimentOut:
    """Cancels every job of the experiment that has not ended (running ones stop at the next
    batch)."""
    with session_scope() as session:  # writes commit in this thread (api.web.deps)
        experiment = experiment_store.cancel_experiment(session, experiment_id, owner)
        session.flush()
        return _out(experiment)


@router.delete(
    "/{experiment_id}",
    status_code=204,
    response_class=Response,
    summary="Delete an experiment, its jobs and their files",
    responses={
        **NOT_FOUND,
        204: {"description": "The experiment, its jobs and their files are gone"},
        409: {
            "model": ErrorOut,
            "description": "A job of it is queued or running (cancel it first), or an "
            "unfinished job elsewhere uses a model of one",
        },
    },
)
def delete_experiment(experiment_id: int, owner: OwnerDep, settings: SettingsDep) -> Response:
    """A finished experiment goes with every job of it (their epochs and files) and its plots."""
    with session_scope() as session:  # writes commit in this thread (api.web.deps)
        deleted = experiment_store.delete_experiment(session, experiment_id, owner)
    artifacts.remove_deleted(settings, deleted)  # after the commit: never rows without files
    return Response(status_code=204)


def _image(name: str, what: str) -> None:
    media_type = "image/svg+xml" if name.endswith(".svg") else "image/png"

    @router.get(
        f"/{{experiment_id}}/{name}",
        summary=what,
        response_class=Response,
        responses={**NOT_FOUND, 200: {"content": {media_type: {}}}},
    )
    def image(
        experiment_id: int, session: ReadSessionDep, owner: OwnerDep, settings: SettingsDep
    ) -> Response:
        experiment = experiment_store.get_experiment(session, experiment_id, owner)
        return artifacts.image(artifacts.experiment_folder(settings, experiment.folder), name)


_image(PLOT, "Test top-1 per epoch of every row (PNG)")
_image(PLOT_SVG, "Test top-1 per epoch of every row (SVG)")
