"""The job spec as the service accepts it: lsq's JobSpec, where a model may also be another job's.

A spec submitted to the service may start from another job's final model (`model.init:
{job: ID}`) and distil from one (`training.distill.teacher: {job: ID}`); the worker resolves
each to that job's model.pt before handing the core a plain `lsq.spec.JobSpec`. Everything
else is the core's model, not a copy of it. The rules for what those fields may name live here
too, for jobs and experiments alike: 'pretrained' (`pretrained_problem`) and another job's
model (`has_a_model`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from api.service.errors import InvalidField
from api.service.models import Job, JobStatus
from lsq.archs import ONNX_ARCH, pretrained_missing
from lsq.spec import (
    DistillSpec,
    JobSpec,
    ModelSpec,
    Path_,
    TrainingSpec,
    pretrained_cannot_teach,
)
from lsq.text import show

# Job ids are 32-bit integers in the service's schema.
MAX_JOB_ID = 2**31 - 1


class JobRef(BaseModel):
    """Start from the final model of another job of the service (resolved by the worker)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    job: int = Field(ge=1, le=MAX_JOB_ID)


SHA256 = Field(
    None,
    pattern="^[0-9a-f]{64}$",
    description="The upload's sha256: the service records it when the job is submitted (given, "
    "it must match)",
)


class UploadRef(BaseModel):
    """Start from safetensors weights sent to POST /v1/models (resolved by the worker)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    upload: int = Field(ge=1, le=MAX_JOB_ID)
    sha256: str | None = SHA256


def _only_onnx(value: Any) -> Any:
    if value != ONNX_ARCH:
        raise ValueError(
            f"{show(value)} with model.upload: an upload named there is a whole ONNX network; "
            "safetensors weights for a named arch go in model.init: {upload: ID}"
        )
    return value


def _not_pretrained(value: Any) -> Any:
    if value == "pretrained":
        raise ValueError("an ONNX model brings its own weights; not 'pretrained'")
    return value


def _init_tag(value: Any) -> str | None:
    """Which ServiceInit member `value` is, by its type: a path (or 'pretrained'), a job or an
    upload."""
    if isinstance(value, str):
        return "Path"
    if isinstance(value, UploadRef) or isinstance(value, dict) and "upload" in value:
        return "UploadRef"
    if isinstance(value, dict | JobRef):
        return "JobRef"
    return None


# One error per mistake (not one per union member): the value's type picks the member.
ServiceInit = Annotated[
    Annotated[Path_, Tag("Path")]
    | Annotated[JobRef, Tag("JobRef")]
    | Annotated[UploadRef, Tag("UploadRef")],
    Discriminator(
        _init_tag,
        custom_error_type="init",
        custom_error_message="expected null, 'pretrained', a path, {job: ID} or {upload: ID}",
    ),
]


class ServiceModelSpec(ModelSpec):
    """A network built by name (or an ONNX file by path), its start widened to other jobs'
    models and uploaded weights."""

    init: ServiceInit | None = Field(
        None,
        description="null (random init), 'pretrained' (torchvision ImageNet weights), the path "
        "of a model.pt or safetensors file, {job: ID} for another job's final model, or "
        "{upload: ID} for safetensors weights sent to POST /v1/models",
    )

    @model_validator(mode="after")
    def _onnx_file(self) -> Self:  # the core's rule, replaced: the service reads no ONNX path
        if self.onnx is not None or self.arch == ONNX_ARCH:
            raise ValueError(
                "model.onnx: the service quantizes ONNX models sent to POST /v1/models, checked "
                "there: name one as model: {upload: ID}"
            )
        return self

    @property
    def upload(self) -> None:  # as UploadedModelSpec's: no upload names the network
        return None

    @property
    def sha256(self) -> None:
        return None


class UploadedModelSpec(BaseModel):
    """An ONNX classifier sent to POST /v1/models: `model: {upload: ID}`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    arch: Annotated[Literal["onnx"], BeforeValidator(_only_onnx)] = Field(
        ONNX_ARCH, description="Always onnx: the upload is the network"
    )
    upload: int = Field(ge=1, le=MAX_JOB_ID, description="The upload's id (POST /v1/models)")
    sha256: str | None = SHA256
    init: Annotated[ServiceInit | None, AfterValidator(_not_pretrained)] = Field(
        None,
        description="null (the upload's own weights) or another job's final model of the same "
        "upload ({job: ID}) or a path",
    )

    @property
    def onnx(self) -> None:  # the worker gives the core the upload's path (for_the_core)
        return None


def _model_tag(value: Any) -> str:
    """Which ServiceModel member `value` is: an upload when it names one."""
    uploaded = isinstance(value, UploadedModelSpec) or isinstance(value, dict) and "upload" in value
    return "Uploaded" if uploaded else "Named"


ServiceModel = Annotated[
    Annotated[ServiceModelSpec, Tag("Named")] | Annotated[UploadedModelSpec, Tag("Uploaded")],
    Discriminator(_model_tag),
]


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

    model: ServiceModel  # type: ignore[assignment]
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
    """The core's JobSpec, each `{job: ID}` and `{upload: ID}` replaced by the path of its
    file (`models`: field -> path; an ONNX upload's field is model.onnx)."""
    data = spec.model_dump(mode="json")
    data["model"].pop("upload", None)
    data["model"].pop("sha256", None)
    for field, path in models.items():
        *parents, last = field.split(".")
        _at(data, ".".join(parents))[last] = path
    return JobSpec.model_validate(data)


def upload_files(spec: ServiceJobSpec) -> dict[str, tuple[int, str, str]]:
    """Core field -> (upload id, sha256, kind) of each upload a submitted spec names."""
    m, found = spec.model, {}
    if m.upload is not None and m.sha256 is not None:
        found["model.onnx"] = (m.upload, m.sha256, "onnx")
    if isinstance(m.init, UploadRef) and m.init.sha256 is not None:
        found["model.init"] = (m.init.upload, m.init.sha256, "safetensors")
    return found


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
    upload = source.spec.get("model", {}).get("upload")
    if upload != spec.model.upload:
        raise InvalidField(field, f"job {source.id} trained upload {upload}, not this network")
    if data != spec.dataset.name:
        raise InvalidField(field, f"job {source.id} is on {data}, not {spec.dataset.name}")
