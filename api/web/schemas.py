"""Response bodies. The request body is the job spec (api.service.job_spec: lsq's JobSpec with
one more kind of model.init); epochs and results are lsq's own records, never copies of them."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from api.service.experiments.results import Row
from api.service.experiments.results import status as experiment_status
from api.service.models import Epoch, Experiment, Job, JobStatus
from api.service.store.epochs import epoch_numbers
from api.service.store.experiments import stored_experiment_spec
from api.service.store.jobs import stored_spec
from lsq.metrics import EpochMetrics, QuantizerHealth, RunResult


def public_worker(name: str | None) -> str | None:
    """A worker as clients see it: stable per worker process, but not its host name and pid
    (the database keeps the full name: the lease is held by it)."""
    return None if name is None else hashlib.sha256(name.encode()).hexdigest()[:12]


class Progress(BaseModel):
    epoch: int = Field(description="The epoch being trained (1-based); 0 before the first")
    fraction: float = Field(description="Fraction of that epoch done, 0 to 1")
    epochs: int = Field(
        description="Epochs the job trains in all (1 for a sensitivity job: its probes)"
    )


def _progress(job: Job, spec: dict[str, Any] | None = None) -> Progress:
    spec = spec or stored_spec(job)
    return Progress(
        epoch=job.progress_epoch,
        fraction=job.progress_fraction,
        epochs=1 if spec.get("sensitivity") else spec["training"]["epochs"],
    )


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
    worker: str | None = Field(
        description="The worker that runs (or ran) the job: an opaque name, the same for all "
        "the jobs of one worker process"
    )
    cancel_requested: bool
    error: str | None
    result: RunResult | None
    compute_tmacs: float | None = Field(
        description="Its estimated compute at submission: multiply-accumulates of the whole "
        "run (epochs x images x the network's cost), in units of 10^12"
    )
    stored_bytes: int | None = Field(
        description="Bytes its files held when it ended (they count to its owner's storage)"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    files_pruned_at: datetime | None = Field(
        description="When retention (LSQ_RETENTION_DAYS) removed the job's files; its record "
        "and epochs stay"
    )
    links: JobLinks

    @classmethod
    def of(cls, job: Job, **extra: Any) -> JobOut:
        base, spec = f"/v1/jobs/{job.id}", stored_spec(job)
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            spec=spec,
            progress=_progress(job, spec),
            attempts=job.attempts,
            worker=public_worker(job.worker),
            cancel_requested=job.cancel_requested,
            error=job.error,
            result=job.result,
            compute_tmacs=job.compute_tmacs,
            stored_bytes=job.stored_bytes,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            files_pruned_at=job.files_pruned_at,
            links=JobLinks(
                self=base,
                epochs=f"{base}/epochs",
                artifacts=f"{base}/artifacts",
                cancel=f"{base}/cancel",
            ),
            **extra,
        )


class JobDetail(JobOut):
    epochs: list[EpochMetrics] = Field(
        description="Every finished epoch so far, in order (quantizers: see .../quantizers)"
    )
    warnings: list[str] = Field(
        [],
        description="What the quantizers' health says is wrong (weights collapsed to 0, "
        "a step that exploded or stopped moving)",
    )

    @classmethod
    def of(cls, job: Job, epochs: list[Epoch] | None = None) -> JobDetail:  # type: ignore[override]
        rows = job.epochs if epochs is None else epochs
        return super().of(job, epochs=[epoch_numbers(e) for e in rows], warnings=job.warnings or [])


class EpochHealth(BaseModel):
    epoch: int
    quantizers: list[QuantizerHealth]


class ExperimentJob(BaseModel):
    id: int
    name: str
    status: JobStatus
    variant: int | None = Field(description="The row's index (0-based); null: the baseline")
    seed: int
    progress: Progress


class ExperimentSummary(BaseModel):
    id: int
    name: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    total_jobs: int
    finished_jobs: int = Field(description="Jobs that ended")
    created_at: datetime
    links: dict[str, str]

    @classmethod
    def of(cls, experiment: Experiment, **extra: Any) -> ExperimentSummary:
        base = f"/v1/experiments/{experiment.id}"
        return cls(
            id=experiment.id,
            name=experiment.name,
            status=experiment_status(experiment.jobs),
            total_jobs=len(experiment.jobs),
            finished_jobs=sum(j.status.finished for j in experiment.jobs),
            created_at=experiment.created_at,
            links={
                "self": base,
                "table": f"{base}?format=md",
                "plot": f"{base}/plot.png",
                "cancel": f"{base}/cancel",
            },  # fmt: skip
            **extra,
        )


class ExperimentOut(ExperimentSummary):
    spec: dict[str, Any] = Field(
        description="The request, as submitted (a base written with an older spec version "
        "upgraded, as jobs' specs are)"
    )
    jobs: list[ExperimentJob]
    rows: list[Row] = Field(description="The baseline, then one row per variant")

    @classmethod
    def of(cls, experiment: Experiment, rows: list[Row]) -> ExperimentOut:  # type: ignore[override]
        jobs = [
            ExperimentJob(
                id=j.id, name=j.name, status=j.status, variant=j.variant,
                seed=j.spec["training"]["seed"], progress=_progress(j),
            )
            for j in experiment.jobs
        ]  # fmt: skip
        return super().of(experiment, spec=stored_experiment_spec(experiment), jobs=jobs, rows=rows)


class ExperimentPage(BaseModel):
    items: list[ExperimentSummary]
    next_cursor: str | None


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


class OwnerLimits(BaseModel):
    max_queued: int = Field(description="Unfinished (queued or running) jobs at once")
    max_running: int = Field(description="Jobs running at once; 0: as many as there are workers")
    max_job_tmacs: float = Field(description="A job's estimated compute (see compute_tmacs)")
    max_job_seconds: float = Field(description="Seconds a job may run (all attempts)")
    max_storage_bytes: int = Field(description="Bytes the owner's jobs' files may hold")


class OwnerUsage(BaseModel):
    queued: int
    running: int
    storage_bytes: int = Field(description="Bytes the owner's ended jobs' files hold")


class Me(BaseModel):
    """Who the token acts for, its limits and what it uses of them."""

    owner: str
    limits: OwnerLimits
    usage: OwnerUsage


class DatasetOut(BaseModel):
    """A dataset a job can name: `{"name": name, "root": root}` (root null: the default)."""

    name: str
    root: str | None = Field(description="The folder to give as dataset.root")
    classes: int | None = Field(description="Class folders (null: past this service's limit)")
    layout: str = Field(description="What the folder holds")


class UploadOut(BaseModel):
    """A model file sent to POST /v1/models: name it in a job as `model: {upload: id}` (an ONNX
    classifier) or `model: {arch: <arch>, init: {upload: id}}` (safetensors weights)."""

    id: int
    filename: str = Field(description="The name it was sent with (informative only)")
    kind: str = Field(description="safetensors or onnx, told by the file's content")
    sha256: str
    size_bytes: int
    arch: str | None = Field(description="The network safetensors weights were checked for")
    classes: int
    channels: int
    image_size: int = Field(description="The images it takes: channels x image_size, square")
    info: dict[str, Any] = Field(
        description="What the check found: tensors and parameters; an ONNX model's ops, and its "
        "cost per image (macs, outputs) for the service's limits"
    )
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> UploadOut:
        fields = {name: getattr(row, name) for name in cls.model_fields}
        return cls(**fields)
