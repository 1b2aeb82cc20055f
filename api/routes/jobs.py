"""/v1/jobs: submit, list, read, cancel, and download a job's files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import FileResponse

from lsq.metrics import EpochMetrics

from .. import artifacts, store
from ..deps import SessionDep, SettingsDep
from ..models import JobStatus
from ..queue import enqueue_when_committed
from ..schemas import Artifact, ErrorOut, JobDetail, JobOut, JobPage
from ..spec import ServiceJobSpec

NOT_FOUND = {404: {"model": ErrorOut, "description": "No job with this id"}}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={422: {"model": ErrorOut}})


@router.post("", status_code=201, summary="Submit a job")
def submit_job(spec: ServiceJobSpec, session: SessionDep, response: Response) -> JobDetail:
    """The body is the job spec (as for `lsq run`); the job starts `queued`."""
    job = store.create_job(session, spec)
    enqueue_when_committed(session, job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobDetail.of(job, epochs=[])


@router.get("", summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JobPage:
    jobs, next_cursor = store.list_jobs(session, status=status, limit=limit, cursor=cursor)
    return JobPage(items=[JobOut.of(job) for job in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", responses=NOT_FOUND, summary="A job with its epochs so far")
def get_job(job_id: int, session: SessionDep) -> JobDetail:
    return JobDetail.of(store.get_job(session, job_id, with_epochs=True))


@router.get("/{job_id}/epochs", responses=NOT_FOUND, summary="Per-epoch metrics so far")
def get_epochs(job_id: int, session: SessionDep) -> list[EpochMetrics]:
    return [EpochMetrics.model_validate(e) for e in store.list_epochs(session, job_id)]


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "The job already ended"}},
)
def cancel_job(job_id: int, session: SessionDep) -> JobOut:
    """A queued job never starts; a running one stops at the next batch boundary, keeps the
    epochs it finished and ends `cancelled` (`cancel_requested` is true until then)."""
    return JobOut.of(store.cancel_job(session, job_id))


@router.get("/{job_id}/artifacts", responses=NOT_FOUND, summary="The job's files so far")
def list_artifacts(job_id: int, session: SessionDep, settings: SettingsDep) -> list[Artifact]:
    store.get_job(session, job_id)
    return [
        Artifact(name=p.name, size=p.stat().st_size, url=f"/v1/jobs/{job_id}/artifacts/{p.name}")
        for p in artifacts.available(settings, job_id)
    ]


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download a file of the job",
    response_class=FileResponse,
    responses={**NOT_FOUND, 200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(
    job_id: int, name: str, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    store.get_job(session, job_id)
    files = {p.name: p for p in artifacts.available(settings, job_id)}  # known names only
    if name not in files:
        raise HTTPException(404, f"job {job_id} has no file {name!r} (it has {sorted(files)})")
    return FileResponse(
        files[name], filename=f"job-{job_id}-{name}", media_type="application/octet-stream"
    )
