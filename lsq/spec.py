"""The job spec: one pydantic model, the contract from the HTTP body to the training loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
)

from .levels import ACCEPTED, Levels, LevelSet, parse_levels

DatasetName = Literal["cifar10", "imagenet", "fashion-mnist", "synthetic"]
Arch = Literal["resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet34", "resnet50"]


def _parse_first_last(value: Any) -> str | LevelSet:
    if value in ("float", "same"):
        return value
    if isinstance(value, str):
        raise ValueError(f"got {value!r}; expected 'float', 'same' or {ACCEPTED}")
    return parse_levels(value)


FirstLast = Annotated[
    Literal["float", "same"] | LevelSet,
    BeforeValidator(_parse_first_last),
    PlainSerializer(lambda v: v if isinstance(v, str) else v.to_json()),
    WithJsonSchema(
        {
            "description": "'float' (first conv and last linear stay full precision), 'same' "
            "(quantized like the others) or a level set of their own "
            "(e.g. {bits: 8, signed: true})",
            "anyOf": [
                {"enum": ["float", "same"]},
                {"type": "array", "items": {"type": "integer"}},
                {"type": "object"},
            ],
        }
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    name: DatasetName
    root: str | None = Field(None, description="Folder of the dataset files; default per dataset")
    train_size: int | None = Field(None, ge=1, description="Seeded class-balanced training subset")
    test_size: int | None = Field(None, ge=1, description="Seeded class-balanced test subset")


# Job ids are 32-bit integers in the service's schema.
MAX_JOB_ID = 2**31 - 1


class JobRef(_Strict):
    """Start from the final model of another job of the service (resolved by the worker)."""

    job: int = Field(ge=1, le=MAX_JOB_ID)


def _init_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "Path"
    if isinstance(value, dict | JobRef):
        return "JobRef"
    return None


# One error per mistake (not one per union member): the value's type picks the member.
Init = Annotated[
    Annotated[str, Tag("Path")] | Annotated[JobRef, Tag("JobRef")],
    Discriminator(
        _init_kind,
        custom_error_type="init",
        custom_error_message="expected null, 'pretrained', a path, or {job: ID}",
    ),
]


class ModelSpec(_Strict):
    arch: Arch
    init: Init | None = Field(
        None,
        description="null (random init), 'pretrained' (torchvision ImageNet weights), the path "
        "of a model.pt state dict, or {job: ID} for another job's final model",
    )


class QuantizationSpec(_Strict):
    weight: Levels | None = Field(None, description="Weight levels; null = full precision")
    activation: Levels | None = Field(None, description="Activation levels; null = full precision")
    first_last: FirstLast = "float"
    granularity: Literal["per_tensor", "per_channel"] = Field(
        "per_tensor", description="One weight step per layer or per output channel"
    )

    @property
    def enabled(self) -> bool:
        return self.weight is not None or self.activation is not None


class TrainingSpec(_Strict):
    epochs: int = Field(90, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, description="Global batch size (split across devices)")
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, description="Never applied to step sizes")
    scheduler: Literal["cosine", "constant"] = "cosine"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU"
    )
    devices: int = Field(1, ge=1, description="Data-parallel processes on the worker's host")


class JobSpec(_Strict):
    """A quantize-and-evaluate job: dataset, network, constraints, training recipe."""

    name: str = Field(min_length=1, max_length=200)
    dataset: DatasetSpec
    model: ModelSpec
    quantization: QuantizationSpec = QuantizationSpec()
    training: TrainingSpec = TrainingSpec()

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        """Read a spec from a YAML or JSON file (YAML is a superset of JSON)."""
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)
