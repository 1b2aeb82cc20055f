"""The job spec as the service accepts it: lsq's JobSpec, with one more kind of `model.init`.

A spec submitted to the service may start from another job's final model, `{job: ID}`; the
worker resolves it to that job's model.pt before handing the core a plain `lsq.spec.JobSpec`.
Everything else is the core's model, not a copy of it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from lsq.spec import JobSpec, ModelSpec, Path_

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


class ServiceJobSpec(JobSpec):
    """A quantize-and-evaluate job submitted to the service (see lsq.spec.JobSpec)."""

    model: ServiceModelSpec


def source_job(spec: ServiceJobSpec) -> int | None:
    """The id of the job whose final model this one starts from, if any."""
    init = spec.model.init
    return init.job if isinstance(init, JobRef) else None


def for_the_core(spec: ServiceJobSpec, source_model: str | None) -> JobSpec:
    """The core's JobSpec, with `{job: ID}` replaced by the path of that job's model."""
    data = spec.model_dump(mode="json")
    if source_model is not None:
        data["model"]["init"] = source_model
    return JobSpec.model_validate(data)
