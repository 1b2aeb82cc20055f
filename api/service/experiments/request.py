"""What a client sends to POST /v1/experiments: `ExperimentSpec`, its baseline (one of four
sources) and each variant's published reference. Checked field by field here; what the rows
make of the base (their job specs) is `plan`'s."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator

from api.service.job_spec import MAX_JOB_ID
from lsq.spec import MAX_EPOCHS, MAX_SEED, DistillOptions, Path_, SensitivitySpec, Strict

MAX_GRID_KEYS, MAX_VALUES, MAX_SEEDS = 8, 16, 16
GRID_PATH = re.compile(r"[A-Za-z_]\w{0,39}(\.[A-Za-z_]\w{0,39}){0,3}", re.ASCII)  # training.lr
MAX_NEW_NAME = 100  # leaves a job name (200) room for `/layer3.8.conv2/seed 3`


class TrainBaseline(Strict):
    """Train the full-precision model inside the experiment: the base spec, quantization off."""

    train: Literal[True]
    training: dict[str, Any] = Field({}, description="Overrides of the base's training")


class JobBaseline(Strict):
    """An existing succeeded job of yours is the baseline."""

    job: int = Field(ge=1, le=MAX_JOB_ID)


class CheckpointBaseline(Strict):
    """A model.pt under the data roots is the baseline (evaluated by every variant first)."""

    checkpoint: Path_


class PretrainedBaseline(Strict):
    """torchvision's ImageNet weights are the baseline (evaluated by every variant first)."""

    pretrained: Literal[True]


BASELINE_KEYS = ("train", "job", "checkpoint", "pretrained")


def _baseline_source_tag(value: Any) -> str | None:
    """Which baseline member `value` is, by its one key; the tag capitalised as no field is:
    error names say `baseline.job`, not `baseline.job.job` (lsq.spec.field_name drops such
    parts)."""
    # A request's dict when validated; a member itself when the request is serialised.
    fields = value if isinstance(value, dict) else getattr(type(value), "model_fields", {})
    keys = [k for k in BASELINE_KEYS if k in fields]
    return keys[0].capitalize() if len(keys) == 1 else None  # one of them, not two


Baseline = Annotated[
    Annotated[TrainBaseline, Tag("Train")]
    | Annotated[JobBaseline, Tag("Job")]
    | Annotated[CheckpointBaseline, Tag("Checkpoint")]
    | Annotated[PretrainedBaseline, Tag("Pretrained")],
    Discriminator(
        _baseline_source_tag,
        custom_error_type="baseline",
        custom_error_message="give exactly one of {train: true}, {job: ID}, {checkpoint: PATH} "
        "and {pretrained: true}",
    ),
]


class Reference(Strict):
    """A published figure to compare a variant with, in percent."""

    test_top1: float = Field(ge=0, le=100)
    test_top5: float | None = Field(None, ge=0, le=100)


def _options(value: Any) -> Any:
    """`distill: true` is the default options, `false` none."""
    return {True: {}, False: None}.get(value, value) if isinstance(value, bool) else value


class SensitivityOptions(SensitivitySpec):
    """A sensitivity experiment's probes: the core's, and whether each fine-tunes."""

    fine_tune: int = Field(
        0,
        ge=0,
        le=MAX_EPOCHS,
        description="0: one job evaluates every probe, untrained (far cheaper); N: one job per "
        "probed layer (and one with every layer quantized), each trained N epochs",
    )


class ExperimentSpec(Strict):
    """A baseline and variants of a base job spec; every variant runs once per seed."""

    kind: Literal["variants", "sensitivity"] = Field(
        "variants",
        description="variants: the rows of `grid` or `variants`; sensitivity: one row per "
        "layer, alone quantized or alone float (`sensitivity`)",
    )
    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=200,
            pattern=r"^[^\x00-\x1f\x7f]*$",
            description=f"At most {MAX_NEW_NAME} characters in a new experiment: its jobs are "
            "named after it (`NAME/layer3.8.conv2/seed 3`)",
        ),
    ]
    base: dict[str, Any] = Field(
        description="A job spec without its name: what every job shares (dataset, model, ...)"
    )
    baseline: Baseline
    grid: dict[str, list[Any]] | None = Field(
        None,
        description="Dotted paths into the spec and their values, crossed: "
        '{"quantization.first_last": ["float", "same"], ...}',
        max_length=MAX_GRID_KEYS,
    )
    variants: list[dict[str, Any]] | None = Field(
        None,
        description="Override objects one by one, e.g. {quantization: {...}}; each may carry "
        "`name` and `reference: {test_top1, test_top5}`",
        max_length=64,
    )
    distill: Annotated[DistillOptions | None, BeforeValidator(_options)] = Field(
        None,
        description="true (temperature 1, alpha 0.5, as the LSQ paper) or {temperature, alpha}: "
        "the baseline is every variant's distillation teacher",
    )
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        None, min_length=1, max_length=MAX_SEEDS, description="Run every variant once per seed"
    )
    sensitivity: SensitivityOptions | None = Field(
        None, description="kind sensitivity: which layers, which mode, fine-tuned or not"
    )

    @field_validator("grid", mode="before")
    @classmethod
    def _values_listed(cls, grid: Any) -> Any:
        # pydantic would blame `grid` itself: an error's location drops a key with dots
        for path, values in grid.items() if isinstance(grid, dict) else ():
            if not isinstance(values, list) and GRID_PATH.fullmatch(str(path)):
                raise ValueError(f"grid.{path}: give a list of values (one value: [VALUE])")
        return grid

    @field_validator("base", "grid", "variants", "baseline", "sensitivity", mode="before")
    @classmethod
    def _shallow(cls, value: Any) -> Any:
        # A job spec is 3 levels deep: anything much deeper is an attack on the recursion
        # (of the plan's deep copies and merges), whichever part of the request carries it.
        if _depth(value) > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        return value


MAX_DEPTH = 6


def _depth(value: Any) -> int:
    """How deeply dicts and lists nest in `value`, counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list) and level <= MAX_DEPTH:
            deepest = max(deepest, level + 1)
            stack += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest
