"""The job spec as the service accepts it: lsq's JobSpec, where a model may also be another job's.

A spec submitted to the service may start from another job's final model (`model.init:
{job: ID}`) and distil from one (`training.distill.teacher: {job: ID}`); the worker resolves
each to that job's model.pt before handing the core a plain `lsq.spec.JobSpec`. Everything
else is the core's model, not a copy of it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from lsq.spec import DistillSpec, JobSpec, ModelSpec, Path_, TrainingSpec

# Job ids are 32-bit integers in the service's schema.
MAX_JOB_ID = 2**31 - 1


class JobRef(BaseModel):
    """Start from the final model of another job of the service (resolved by the worker)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    job: int = Field(ge=1, le=MAX_JOB_ID)


def _init_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "Path"
    if isinstance(value, dict | JobRef):
        return "JobRef"
    return None


# One error per mistake (not one per union member): the value's type picks the member.
ServiceInit = Annotated[
    Annotated[Path_, Tag("Path")] | Annotated[JobRef, Tag("JobRef")],
    Discriminator(
        _init_kind,
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
MODEL_FIELDS = ("model.init", "training.distill.teacher")


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
