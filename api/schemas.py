"""Response bodies. The request body is the job spec (api.spec, lsq's JobSpec with one more
kind of model.init); epochs and results are lsq's own records, never copies of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from lsq.metrics import EpochMetrics, RunResult

from .models import Epoch, Job, JobStatus
from .store import stored_spec


class Progress(BaseModel):
    epoch: int = Field(description="The epoch being trained (1-based); 0 before the first")
    fraction: float = Field(description="Fraction of that epoch done, 0 to 1")
    epochs: int = Field(description="Epochs the job trains in all")


class JobLinks(BaseModel):
    self: str
    epochs: str
    artifacts: str
    cancel: str


class JobOut(BaseModel):
    id: int
    name: str
    status: JobStatus
    spec: dict[str, Any] = Field(
        description="The job spec as submitted (the body of POST /v1/jobs), upgraded to the "
        "current spec version; returned as stored, so an old job stays readable"
    )
    progress: Progress
    attempts: int = Field(description="How many times a worker started (or resumed) the job")
    worker: str | None = Field(description="The worker that runs (or ran) the job")
    cancel_requested: bool
    error: str | None
    result: RunResult | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks

    @classmethod
    def of(cls, job: Job, **extra: Any) -> JobOut:
        base, spec = f"/v1/jobs/{job.id}", stored_spec(job)
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            spec=spec,
            progress=Progress(
                epoch=job.progress_epoch,
                fraction=job.progress_fraction,
                epochs=spec["training"]["epochs"],
            ),
            attempts=job.attempts,
            worker=job.worker,
            cancel_requested=job.cancel_requested,
            error=job.error,
            result=job.result,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            links=JobLinks(
                self=base,
                epochs=f"{base}/epochs",
                artifacts=f"{base}/artifacts",
                cancel=f"{base}/cancel",
            ),
            **extra,
        )


class JobDetail(JobOut):
    epochs: list[EpochMetrics] = Field(description="Every finished epoch so far, in order")

    @classmethod
    def of(cls, job: Job, epochs: list[Epoch] | None = None) -> JobDetail:  # type: ignore[override]
        rows = job.epochs if epochs is None else epochs
        return super().of(job, epochs=[EpochMetrics.model_validate(e) for e in rows])


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="?cursor= for the next page; null at the end")


class Artifact(BaseModel):
    name: str
    size: int = Field(description="Bytes")
    url: str


class ErrorField(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. quantization.weight")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable kind, e.g. not_found, invalid, conflict")
    message: str
    fields: list[ErrorField] = []


class ErrorOut(BaseModel):
    """The shape of every error response."""

    error: ErrorBody
