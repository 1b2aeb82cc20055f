"""The job spec as the service accepts it: lsq's JobSpec, where a model may also be another job's.

A spec submitted to the service may start from another job's final model (`model.init:
{job: ID}`) and distil from one (`training.distill.teacher: {job: ID}`); the worker resolves
each to that job's model.pt before handing the core a plain `lsq.spec.JobSpec`. Everything
else is the core's model, not a copy of it. The rules for what those fields may name live here
too, for jobs and experiments alike: 'pretrained' (`pretrained_problem`) and another job's
model (`has_a_model`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from api.service.errors import InvalidField
from api.service.models import Job, JobStatus
from lsq.archs import pretrained_missing
from lsq.spec import (
    DistillSpec,
    JobSpec,
    ModelSpec,
    Path_,
    TrainingSpec,
    pretrained_cannot_teach,
)

# Job ids are 32-bit integers in the service's schema.
MAX_JOB_ID = 2**31 - 1


class JobRef(BaseModel):
    """Start from the final model of another job of the service (resolved by the worker)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    job: int = Field(ge=1, le=MAX_JOB_ID)


def _init_tag(value: Any) -> str | None:
    """Which ServiceInit member `value` is, by its type: a path (or 'pretrained'), or a job."""
    if isinstance(value, str):
        return "Path"
    if isinstance(value, dict | JobRef):
        return "JobRef"
    return None


# One error per mistake (not one per union member): the value's type picks the member.
ServiceInit = Annotated[
    Annotated[Path_, Tag("Path")] | Annotated[JobRef, Tag("JobRef")],
    Discriminator(
        _init_tag,
        custom_error_type="init",
        custom_error_message="expected null, 'pretrained', a path, or {job: ID}",
    ),
]


class ServiceModelSpec(ModelSpec):
    init: ServiceInit | None = Field(
        None,
        description="null (random init), 'pretrained' (torchvision ImageNet weights), the path "
        "of a model.pt state dict, or {job: ID} for another job's final model",
    )


class ServiceDistillSpec(DistillSpec):
    teacher: ServiceInit = Field(
        description="'pretrained', the path of a model.pt of the same arch, or {job: ID}"
    )


class ServiceTrainingSpec(TrainingSpec):
    distill: ServiceDistillSpec | None = Field(
        None, description="Learn from a teacher's softened outputs as well as from the labels"
    )


class ServiceJobSpec(JobSpec):
    """A quantize-and-evaluate job submitted to the service (see lsq.spec.JobSpec)."""

    model: ServiceModelSpec
    training: ServiceTrainingSpec = ServiceTrainingSpec()


# The fields where a spec names a model: a path, 'pretrained', or (service) another job's.
TEACHER = "training.distill.teacher"
MODEL_FIELDS = ("model.init", TEACHER)


def named_models(spec: JobSpec) -> dict[str, Any]:
    """Field -> what each of MODEL_FIELDS holds in a validated spec (None where unset)."""
    distill = spec.training.distill
    return dict(zip(MODEL_FIELDS, (spec.model.init, distill and distill.teacher), strict=True))


def _at(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def source_jobs(spec: dict[str, Any]) -> dict[str, int]:
    """Field -> id of each job whose final model a spec (a JSON object, as stored) uses."""
    found = {field: _at(spec, field) for field in MODEL_FIELDS}
    return {f: v["job"] for f, v in found.items() if isinstance(v, dict) and "job" in v}


def for_the_core(spec: ServiceJobSpec, models: dict[str, str]) -> JobSpec:
    """The core's JobSpec, each `{job: ID}` replaced by the path of that job's model."""
    data = spec.model_dump(mode="json")
    for field, path in models.items():
        *parents, last = field.split(".")
        _at(data, ".".join(parents))[last] = path
    return JobSpec.model_validate(data)


def pretrained_problem(field: str, arch: str, dataset: str) -> str | None:
    """Why 'pretrained' (torchvision's ImageNet weights) cannot be `field` (one of
    MODEL_FIELDS) of a job of `arch` on `dataset`, or None: only torchvision's ResNets have
    them, and as a teacher their head knows ImageNet's classes alone. Checked on what is
    submitted (a job, an experiment's baseline), not in the spec, so a stored spec stays
    readable; lsq.spec refuses the teacher half on its own, for the core's users."""
    if problem := pretrained_missing(arch):
        return problem
    return pretrained_cannot_teach(dataset) if field == TEACHER else None


def has_a_model(field: str, source: Job, spec: JobSpec) -> None:
    """Raise unless `spec`'s job may start from (or learn from) `source`'s model: not ended
    without one, not a probe, the same network on the same data (so its layers' shapes fit)."""
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
