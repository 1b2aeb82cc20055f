"""/v1/jobs: submit, list, read, cancel, and download a job's files. Every route acts for the
token's owner: another owner's job is as missing as one that never existed."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response
from fastapi.responses import StreamingResponse

from api.service import artifacts, limits
from api.service.db import session_scope
from api.service.job_spec import ServiceJobSpec
from api.service.models import JobStatus
from api.service.owners import Limits
from api.service.queue import enqueue_when_committed
from api.service.store import epochs as epoch_store
from api.service.store import jobs as job_store
from api.web.auth import OwnerDep
from api.web.deps import ReadSessionDep, SettingsDep
from api.web.schemas import Artifact, EpochHealth, ErrorOut, JobDetail, JobOut, JobPage
from lsq.files import PLOT, PLOT_SVG, QUANTIZER_PLOT, SENSITIVITY_PLOT
from lsq.metrics import EpochMetrics

NOT_FOUND = {404: {"model": ErrorOut, "description": "No job with this id"}}
ERRORS = {
    400: {"model": ErrorOut, "description": "A body that is not JSON, or an unknown Host"},
    401: {"model": ErrorOut, "description": "No valid token"},
    422: {"model": ErrorOut},
    429: {"model": ErrorOut, "description": "Too many requests or unfinished jobs (Retry-After)"},
}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS)
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=180,
        pattern=r"^[\x21-\x7e]+$",
        description="Send the same key again (after a timeout, say) to get the job it made "
        "instead of a second one",
    ),
]


def submitted(model: type) -> dict[int | str, dict]:
    """The answers of a submission besides 201: the same Idempotency-Key again, and so on."""
    return {
        200: {"model": model, "description": "What this Idempotency-Key made before"},
        409: {"model": ErrorOut, "description": "The key's first request is still running"},
        413: {"model": ErrorOut, "description": "The body is too large"},
    }


@router.post("", status_code=201, summary="Submit a job", responses=submitted(JobDetail))
def submit_job(
    spec: ServiceJobSpec,
    owner: OwnerDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobDetail:
    """The body is the job spec (as for `lsq run`); the job starts `queued`."""
    limits.check_job(spec, settings)
    with session_scope() as session:  # writes commit in this thread (api.web.deps)
        job, new = job_store.submit_job(
            session, owner, spec, limits=Limits.defaults(settings),
            key=idempotency_key, key_expiry=timedelta(seconds=settings.idempotency_seconds),
        )  # fmt: skip
        if new:
            enqueue_when_committed(session, job.id)
        body = JobDetail.of(job, epochs=[] if new else None)
    response.status_code = 201 if new else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return body


@router.get("", summary="List jobs, newest first")
def list_jobs(
    session: ReadSessionDep,
    owner: OwnerDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JobPage:
    jobs, next_cursor = job_store.list_jobs(
        session, owner, status=status, limit=limit, cursor=cursor
    )
    return JobPage(items=[JobOut.of(job) for job in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", responses=NOT_FOUND, summary="A job with its epochs so far")
def get_job(job_id: int, session: ReadSessionDep, owner: OwnerDep) -> JobDetail:
    return JobDetail.of(job_store.get_job(session, job_id, owner=owner, with_epochs=True))


@router.get("/{job_id}/epochs", responses=NOT_FOUND, summary="Per-epoch metrics so far")
def get_epochs(job_id: int, session: ReadSessionDep, owner: OwnerDep) -> list[EpochMetrics]:
    return [epoch_store.epoch_numbers(e) for e in epoch_store.list_epochs(session, job_id, owner)]


@router.get(
    "/{job_id}/quantizers", responses=NOT_FOUND, summary="Quantizer health per epoch so far"
)
def get_quantizers(job_id: int, session: ReadSessionDep, owner: OwnerDep) -> list[EpochHealth]:
    """Per epoch, each quantized tensor's step size and share of values at each level
    (measured on one test batch); empty for a full-precision job."""
    epochs = epoch_store.list_epochs(session, job_id, owner, health=True)
    return [EpochHealth(epoch=e.epoch, quantizers=e.quantizers) for e in epochs if e.quantizers]


def _image(name: str, what: str) -> None:
    @router.get(
        f"/{{job_id}}/{name}",
        summary=what,
        response_class=Response,
        responses={**NOT_FOUND, 200: {"content": {IMAGE[name]: {}}}},
    )
    def image(
        job_id: int, session: ReadSessionDep, owner: OwnerDep, settings: SettingsDep
    ) -> Response:
        job = job_store.get_job(session, job_id, owner=owner)
        return artifacts.image(artifacts.job_folder(settings, job.folder), name)


IMAGE = {PLOT: "image/png", PLOT_SVG: "image/svg+xml", QUANTIZER_PLOT: "image/png",
         SENSITIVITY_PLOT: "image/png"}  # fmt: skip
_image(PLOT, "Accuracy and loss per epoch (PNG)")
_image(PLOT_SVG, "Accuracy and loss per epoch (SVG)")
_image(QUANTIZER_PLOT, "Step sizes and weights at zero per epoch (PNG)")
_image(SENSITIVITY_PLOT, "A sensitivity job's drop in accuracy per layer (PNG)")


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "The job already ended"}},
)
def cancel_job(job_id: int, owner: OwnerDep) -> JobOut:
    """A queued job never starts; a running one stops at the next batch boundary, keeps the
    epochs it finished and ends `cancelled` (`cancel_requested` is true until then)."""
    with session_scope() as session:  # writes commit in this thread (api.web.deps)
        return JobOut.of(job_store.cancel_job(session, job_id, owner))


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a job and its files",
    responses={
        **NOT_FOUND,
        204: {"description": "The job, its epochs and its files are gone"},
        409: {
            "model": ErrorOut,
            "description": "The job is queued or running (cancel it first), belongs to an "
            "experiment (delete that), or an unfinished job uses its model",
        },
    },
)
def delete_job(job_id: int, owner: OwnerDep, settings: SettingsDep) -> Response:
    """A finished job goes with its epochs and files: for good."""
    with session_scope() as session:  # writes commit in this thread (api.web.deps)
        deleted = job_store.delete_job(session, job_id, owner)
    artifacts.remove_deleted(settings, deleted)  # after the commit: never rows without files
    return Response(status_code=204)


@router.get("/{job_id}/artifacts", responses=NOT_FOUND, summary="The job's files so far")
def list_artifacts(
    job_id: int, session: ReadSessionDep, owner: OwnerDep, settings: SettingsDep
) -> list[Artifact]:
    job = job_store.get_job(session, job_id, owner=owner)
    return [
        Artifact(name=name, size=size, url=f"/v1/jobs/{job_id}/artifacts/{name}")
        for name, size in artifacts.available(settings, job.folder).items()
    ]


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download a file of the job",
    response_class=StreamingResponse,
    responses={
        **NOT_FOUND,
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "The range asked for", "content": {"application/octet-stream": {}}},
        416: {"model": ErrorOut, "description": "A range that starts past the file's end"},
    },
)
def download_artifact(
    job_id: int,
    name: str,
    session: ReadSessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    byte_range: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> StreamingResponse:
    """The whole file, or one `Range: bytes=A-B` of it (206; `If-Range: <its ETag>` makes a
    resumed download safe: another version of the file comes whole)."""
    job = job_store.get_job(session, job_id, owner=owner)
    files = artifacts.available(settings, job.folder)  # known names only
    response = None
    if name in files:
        path = artifacts.job_folder(settings, job.folder) / name
        response = artifacts.download(path, f"job-{job_id}-{name}", byte_range, if_range)
    if response is None:
        raise HTTPException(404, f"job {job_id} has no file {name!r} (it has {sorted(files)})")
    return response
