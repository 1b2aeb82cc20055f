"""Experiments: a baseline and a grid (or list) of quantized variants of it, in one request.

`ExperimentSpec` is the request; `plan` turns it into job specs (the baseline's, then one per
variant and seed, each starting from the baseline's model); `rows` reads the jobs back as the
results table (accuracy, drop against the baseline, mean and spread over seeds, the published
reference), which `markdown` and `csv_text` print in the reference's columns.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import itertools
import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    computed_field,
    field_validator,
)

from api.service.errors import InvalidField
from api.service.job_spec import MAX_JOB_ID, ServiceJobSpec
from api.service.models import Job, JobStatus
from api.service.store import spec_of
from lsq.archs import layer_names, pretrained_missing
from lsq.metrics import fixed
from lsq.spec import (
    MAX_EPOCHS,
    MAX_SEED,
    DistillOptions,
    Path_,
    QuantizationSpec,
    SensitivitySpec,
    Strict,
    describe_errors,
    pretrained_cannot_teach,
    printable,
)
from lsq.text import cut

MAX_GRID_KEYS, MAX_VALUES, MAX_SEEDS = 8, 16, 16
GRID_PATH = re.compile(r"[A-Za-z_]\w{0,39}(\.[A-Za-z_]\w{0,39}){0,3}", re.ASCII)  # training.lr
MAX_NEW_NAME = 100  # leaves a job name (200) room for `/layers.26.conv2/seed 3`


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


KINDS = ("train", "job", "checkpoint", "pretrained")


def _baseline_kind(value: Any) -> str | None:
    """The member's tag, capitalised as no field is: error names say `baseline.job`, not
    `baseline.job.job` (lsq.spec.field_name drops such parts)."""
    kinds = [k for k in KINDS if isinstance(value, dict) and k in value]
    return kinds[0].capitalize() if len(kinds) == 1 else None  # one of them, not two


Baseline = Annotated[
    Annotated[TrainBaseline, Tag("Train")]
    | Annotated[JobBaseline, Tag("Job")]
    | Annotated[CheckpointBaseline, Tag("Checkpoint")]
    | Annotated[PretrainedBaseline, Tag("Pretrained")],
    Discriminator(
        _baseline_kind,
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
            "named after it (`NAME/layers.26.conv2/seed 3`)",
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


@dataclass(frozen=True)
class Variant:
    where: str  # the request's field it came from: grid or variants.N
    index: int  # 0-based; the table's ID is index + 1
    reference: Reference | None
    specs: list[ServiceJobSpec]  # one per seed, model.init still unset


@dataclass(frozen=True)
class Plan:
    baseline: ServiceJobSpec | None  # the job to train, for {train: true}
    variants: list[Variant]
    distill: dict[str, float] | None = None  # the variants' training.distill, but the teacher

    def specs(self) -> list[tuple[str, ServiceJobSpec]]:
        """Every job spec with the request's field it came from."""
        out = [("baseline", self.baseline)] if self.baseline else []
        return out + [(v.where, spec) for v in self.variants for spec in v.specs]


def plan(exp: ExperimentSpec, max_jobs: int) -> Plan:
    """The experiment's jobs, each validated as a job spec (InvalidField names the first bad
    field as the request has it: `grid.quantization.weight`, `variants.2.training.lr`)."""
    _check_kind(exp)
    if len(exp.name) > MAX_NEW_NAME:  # stored ones may be longer: reads never re-plan
        raise InvalidField("name", f"at most {MAX_NEW_NAME} characters: its jobs carry it")
    if "name" in exp.base:  # it would be dropped without a word
        raise InvalidField("base.name", f"set by the experiment: {SET_BY_EXPERIMENT['name']}")
    base = _validated(exp.base | {"name": exp.name}, "base")  # as given: no merge hides a value
    _check_teacher(exp, base)
    seeds = exp.seeds or [base.training.seed]
    if len(set(seeds)) != len(seeds):
        raise InvalidField("seeds", "each seed once")
    trained = isinstance(exp.baseline, TrainBaseline)
    limit = JobLimit(exp, len(seeds), max_jobs - trained, max_jobs)
    _paths_apart(exp.grid or {})
    overrides = _overrides(exp, limit)  # counted before any is built
    for override in overrides if exp.kind != "sensitivity" else []:  # ours
        _not_set_here(override.where, override.change, exp.distill is not None)
    baseline = None
    if isinstance(exp.baseline, TrainBaseline):
        spec = _merge(exp.base, {"training": exp.baseline.training})
        spec |= {"name": f"{exp.name}/baseline", "quantization": {}}  # float, whatever the base
        spec.pop("sensitivity", None)
        spec["training"] = {**spec.get("training", {}), "seed": seeds[0]}
        baseline = _validated(spec, "baseline")
    variants = []
    for index, (where, change, name, reference) in enumerate(overrides):
        specs = []
        label = name if exp.kind == "sensitivity" else str(index + 1)
        for seed in seeds:
            spec = _merge(_variant_base(exp), change)
            if not isinstance(spec.get("training", {}), dict):
                raise InvalidField(f"{where}.training", "must be an object")
            spec["name"] = f"{exp.name}/{label}" + (f"/seed {seed}" if len(seeds) > 1 else "")
            spec["training"] = {**spec.get("training", {}), "seed": seed}
            specs.append(_starts_from(_validated_variant(spec, where), base, where))
        variants.append(Variant(where, index, reference, specs))
    if exp.kind != "sensitivity":  # its rows are the network's layers, each once
        _each_once(variants, overrides)
    return Plan(baseline, variants, exp.distill.model_dump() if exp.distill else None)


def _each_once(variants: list[Variant], overrides: list[Override]) -> None:
    """Two variants that would run the same jobs (a grid value given twice, [-1, 0, 1] and
    [1, 0, -1]) are one variant paid for twice: refused, naming both as the request has them."""
    seen: dict[str, Variant] = {}
    for v in variants:  # unsorted: quantization.layers' order is meaningful (first match wins)
        jobs = v.specs[0].model_dump_json(exclude={"name"})
        if (first := seen.setdefault(jobs, v)) is not v:
            a, b = (_settings(overrides[x.index].change) for x in (v, first))
            same = f"variant {v.index + 1} ({a}) would run the same jobs as variant "
            raise InvalidField(v.where, f"{same}{first.index + 1} ({b}); seeds repeat a variant")


def _settings(change: dict[str, Any]) -> str:
    """A variant's change as `key=value, ...`, cut short."""
    return cut(_key_values(_flatten(change)) or "the base", 200)


@dataclass(frozen=True)
class JobLimit:
    """How many rows an experiment may plan: checked on their count, before they are built."""

    exp: ExperimentSpec
    seeds: int
    jobs_left: int  # after the trained baseline's
    max_jobs: int

    def check(self, rows: int) -> None:
        if rows * self.seeds > self.jobs_left:
            sensitivity = self.exp.kind == "sensitivity"
            raise InvalidField(
                "sensitivity" if sensitivity else _rows_field(self.exp),
                f"{rows} {'rows' if sensitivity else 'variants'} x {self.seeds} seeds is more "
                f"than the {self.max_jobs} jobs an experiment may have (LSQ_MAX_EXPERIMENT_JOBS)",
            )


def _check_teacher(exp: ExperimentSpec, base: ServiceJobSpec) -> None:
    if not isinstance(exp.baseline, PretrainedBaseline):
        return
    if problem := pretrained_missing(base.model.arch):
        raise InvalidField("baseline.pretrained", problem)
    if exp.distill and (problem := pretrained_cannot_teach(base.dataset.name)):
        raise InvalidField("distill", f"{problem}: train the baseline or name one")


def _starts_from(variant: ServiceJobSpec, base: ServiceJobSpec, where: str) -> ServiceJobSpec:
    """A variant starts from the baseline's model: the same network on the same data."""
    for field, own, baseline in (
        ("model.arch", variant.model.arch, base.model.arch),
        ("dataset.name", variant.dataset.name, base.dataset.name),
    ):
        if own != baseline:
            raise InvalidField(
                f"{where}.{field}", f"the variants start from the baseline, whose {field} is "
                f"{baseline}, not {own} (another one is another experiment)",
            )  # fmt: skip
    return variant


# What an experiment sets itself in every job: a variant changing them would be overwritten.
SET_BY_EXPERIMENT = {"name": "the experiment names its jobs", "model.init": "the baseline",
                     "training.seed": "`seeds`"}  # fmt: skip


def _not_set_here(where: str, change: dict[str, Any], distill: bool) -> None:
    for path in _flatten(change):
        if distill and path.startswith("training.distill"):
            raise InvalidField(f"{where}.{path}", "set by the experiment: use `distill`")
        if path in SET_BY_EXPERIMENT or path.startswith("model.init."):
            why = SET_BY_EXPERIMENT.get(path, "the baseline")
            raise InvalidField(f"{where}.{path}", f"set by the experiment: use {why}")


def _check_kind(exp: ExperimentSpec) -> None:
    """Rows come from grid or variants, or (kind sensitivity) from the network's layers."""
    given = "grid" if exp.grid is not None else "variants" if exp.variants is not None else None
    if exp.kind == "sensitivity":
        if given:
            raise InvalidField(given, "a sensitivity experiment makes its rows from `sensitivity`")
        if exp.distill and not (exp.sensitivity and exp.sensitivity.fine_tune):
            raise InvalidField("distill", "untrained probes learn nothing: set fine_tune")
    elif exp.sensitivity is not None:
        raise InvalidField("sensitivity", "for kind: sensitivity only")
    elif exp.variants == [] and exp.grid is None:
        raise InvalidField("variants", "give at least one variant")
    elif (exp.grid is None) == (exp.variants is None) or not (exp.grid or exp.variants):
        raise InvalidField("grid", "give either grid or variants (not both, not neither)")


class Override(NamedTuple):
    """What one variant changes in the base, and where the request said so."""

    where: str  # the request's field: `grid`, `variants.2`, `sensitivity`
    change: dict[str, Any]
    name: str | None
    reference: Reference | None


def _overrides(exp: ExperimentSpec, limit: JobLimit | None = None) -> list[Override]:
    """Per variant: the request's field it came from, its change, name and reference. With a
    limit (a new request), their count is checked before any is built."""
    check = limit.check if limit is not None else lambda rows: None
    if exp.kind == "sensitivity":
        return _probes(exp, check)
    if exp.grid is not None:
        return _grid(exp.grid, check)
    check(len(exp.variants or []))
    return _listed(exp.variants or [])


# What an untrained probe's spec is checked with: the experiment sets model.init when stored.
SOME_JOB = {"job": 1}


def _probes(exp: ExperimentSpec, check: Callable[[int], None]) -> list[Override]:
    """Untrained: one job probes every layer (lsq.sensitivity). Fine-tuned: one job with every
    layer quantized, then one per probed layer, each with its levels named layer by layer."""
    options = exp.sensitivity or SensitivityOptions()
    if not options.fine_tune:
        check(1)
        probe = {"sensitivity": options.model_dump(exclude={"fine_tune"})}
        return [Override("sensitivity", probe, "probes", None)]
    base = _validated(_merge(exp.base, {"name": exp.name}), "base")
    arch, q = base.model.arch, base.quantization
    if not q.enabled:
        raise InvalidField("base.quantization", "give the levels to probe each layer at")
    try:
        layers = options.probed(arch, q)
    except ValueError as e:
        raise InvalidField("sensitivity.layers", str(e)) from None
    check(1 + len(layers))
    warmup = min(base.training.warmup_epochs, options.fine_tune or 0)
    training = {"epochs": options.fine_tune, "warmup_epochs": warmup}
    return [
        Override("sensitivity", {"quantization": {"layers": options.levels_for(arch, q, layer)},
                                 "training": training}, layer or "every layer", None)
        for layer in [None, *layers]
    ]  # fmt: skip


def _rows_field(exp: ExperimentSpec) -> str:
    return "grid" if exp.grid is not None else "variants"


def _validated_variant(spec: dict[str, Any], where: str) -> ServiceJobSpec:
    """A variant's spec, model.init unset; an untrained probe's is checked as it will run,
    from a model (the experiment sets which)."""
    if "sensitivity" not in spec:
        return _validated(spec, where)
    checked = _validated(_merge(spec, {"model": {"init": SOME_JOB}}), where)
    return checked.model_copy(update={"model": checked.model.model_copy(update={"init": None})})


def _variant_base(exp: ExperimentSpec) -> dict[str, Any]:
    """What variants are laid over: the base, less its per-layer levels where a fine-tuned
    probe names every layer's own (they already hold the base's)."""
    if exp.kind != "sensitivity" or not (exp.sensitivity and exp.sensitivity.fine_tune):
        return exp.base
    base = copy.deepcopy(exp.base)
    if isinstance(base.get("quantization"), dict):
        base["quantization"].pop("layers", None)
    return base


def _grid(grid: dict[str, list[Any]], check: Callable[[int], None]) -> list[Override]:
    for path, values in grid.items():
        shown = cut(path, 60)
        if not GRID_PATH.fullmatch(path):
            raise InvalidField(f"grid.{shown}", "not a dotted path such as quantization.weight")
        if not 1 <= len(values) <= MAX_VALUES:
            raise InvalidField(f"grid.{path}", f"give 1 to {MAX_VALUES} values")
    check(math.prod(len(values) for values in grid.values()))
    combos = itertools.product(*grid.values())
    return [Override("grid", _nested(dict(zip(grid, combo, strict=True))), None, None)
            for combo in combos]  # fmt: skip


def _paths_apart(grid: dict[str, list[Any]]) -> None:
    """No grid path lies inside another (`training.lr` and `training.lr.x`): the outer one
    sets the whole of the inner one's value, so one of the two would be lost, or would land
    inside the other's values."""
    for inner, outer in itertools.permutations(grid, 2):
        if inner.startswith(f"{outer}."):
            raise InvalidField(
                f"grid.{cut(inner, 60)}", f"inside grid.{cut(outer, 60)}, which sets all of it: "
                "give one of the two",
            )  # fmt: skip


def _listed(variants: list[dict[str, Any]]) -> list[Override]:
    out = []
    for i, raw in enumerate(variants):
        change = dict(raw)
        name, reference = change.pop("name", None), change.pop("reference", None)
        if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 100):
            raise InvalidField(f"variants.{i}.name", "a name of 1 to 100 characters")
        try:
            printable(name or "")
        except ValueError as e:
            raise InvalidField(f"variants.{i}.name", str(e)) from None
        try:
            reference = Reference.model_validate(reference) if reference is not None else None
        except ValidationError as e:
            field, message = describe_errors(e)[0]
            raise InvalidField(f"variants.{i}.reference.{field}".rstrip("."), message) from None
        out.append(Override(f"variants.{i}", change, name, reference))
    return out


def _validated(spec: dict[str, Any], where: str) -> ServiceJobSpec:
    try:
        return ServiceJobSpec.model_validate(spec)
    except ValidationError as e:
        field, message = describe_errors(e, ServiceJobSpec)[0]
        if field.split(".")[0] == where:  # `sensitivity`: the experiment's is the job's
            raise InvalidField(field, message) from None
        raise InvalidField(f"{where}.{field}" if field != "body" else where, message) from None


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`base` with `change` laid over it, sections merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in dotted.items():
        *parents, last = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path != "quantization.layers":  # keys: globs
            out |= _flatten(value, f"{path}.")
        else:
            out[path] = value
    return out


# ------------------------------------------------------------------------------- results


class Stat(BaseModel):
    mean: float
    std: float | None = Field(description="Over seeds; null with one")
    n: int


# What the reference's columns already show of a variant's settings.
IN_COLUMNS = {"quantization.first_last", "quantization.weight", "quantization.activation",
              "training.lr", "training.epochs"}  # fmt: skip


class Row(BaseModel):
    """A line of the results table: the baseline, or a variant over its seeds."""

    id: str = Field(description="'FP' for the baseline, else the variant's number")
    label: str
    baseline: bool
    settings: dict[str, Any]
    epochs: int | None = Field(description="Null on a baseline not trained here")
    quan_lr: str
    constr_w: str
    constr_a: str
    lr_base: float | None = Field(description="Null on a baseline not trained here")
    jobs: list[int]
    finished: int = Field(description="How many of `jobs` succeeded")
    test_top1: Stat | None
    test_top5: Stat | None
    drop_top1: Stat | None = Field(description="Baseline minus this row, in points")
    drop_top5: Stat | None
    reference: Reference | None = None
    delta_vs_reference: float | None = Field(
        None, description="test_top1 minus the reference's, in points"
    )
    layer: str | None = Field(
        None, description="Sensitivity rows: the probed layer (constr_w/constr_a are its levels)"
    )

    @computed_field(
        description="The settings no other column shows, `key=value, ...` "
        "(`quantization.weight_init=mse`), so rows that differ only there are told apart"
    )
    @functools.cached_property
    def other_settings(self) -> str:
        if "mode" in self.settings:
            return ""  # a sensitivity probe differs from the others in its layer alone
        return _key_values({k: v for k, v in self.settings.items() if k not in IN_COLUMNS})


def _key_values(settings: dict[str, Any]) -> str:
    """Flattened settings as `key=value, ...`: a string as written, anything else as JSON."""
    return ", ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
        for key, value in settings.items()
    )


# A row's numbers in JSON: a difference of two accuracies carries float noise (91.23 - 92.18
# is -0.9500000000000028); a millionth of a point is far below what a test set resolves (one
# image in 50 000 is 0.002 points), and a 256-image set's steps (0.390625) stay exact.
DECIMALS = 6


def _stat(values: list[float]) -> Stat | None:
    if not values:
        return None
    std = round(statistics.stdev(values), DECIMALS) if len(values) > 1 else None
    return Stat(mean=round(statistics.fmean(values), DECIMALS), std=std, n=len(values))


def _quan_lr(q: QuantizationSpec) -> str:
    if not q.enabled or q.first_last == "float":
        return "no"
    return "yes" if q.first_last == "same" else f"yes {q.first_last}"


def _row(rid: str, label: str, specs: list[ServiceJobSpec], jobs: list[Job], **extra: Any) -> Row:
    q, t = specs[0].quantization, specs[0].training
    return Row(
        id=rid,
        label=label,
        epochs=t.epochs,
        quan_lr=_quan_lr(q),
        constr_w=str(q.weight) if q.weight else "none",
        constr_a=str(q.activation) if q.activation else "none",
        lr_base=t.lr,
        jobs=[j.id for j in jobs],
        finished=sum(j.status == JobStatus.succeeded for j in jobs),
        **extra,
    )


def rows(exp: ExperimentSpec, jobs: list[Job]) -> list[Row]:
    """The baseline row (when the experiment trains or names one, or once a variant measured
    the checkpoint), then one row per variant."""
    done = {j.id: j.result for j in jobs if j.status == JobStatus.succeeded and j.result}
    baseline_jobs = [j for j in jobs if j.variant is None]
    by_variant: dict[int, list[Job]] = {}
    for j in jobs:
        if j.variant is not None:
            by_variant.setdefault(j.variant, []).append(j)
    start = _start(baseline_jobs, jobs, done)
    out = []
    if baseline_jobs or start is not None:
        out.append(_baseline_row(exp.baseline, baseline_jobs, start))
    if exp.kind == "sensitivity":
        return out + _probe_rows(exp, by_variant, done, start)
    overrides = _overrides(exp)
    for index, variant_jobs in sorted(by_variant.items()):
        specs = [spec_of(j) for j in variant_jobs]
        override = overrides[index]
        results = [done[j.id] for j in variant_jobs if j.id in done]
        top1 = [r["final_top1"] for r in results]
        top5 = [r["final_top5"] for r in results]
        drop1 = [start[0] - v for v in top1] if start else []
        drop5 = [start[1] - v for v in top5] if start else []
        ref = override.reference
        delta = round(statistics.fmean(top1) - ref.test_top1, DECIMALS) if ref and top1 else None
        label = override.name or specs[0].quantization.describe()
        out.append(
            _row(str(index + 1), label, specs, variant_jobs, baseline=False,
                 settings=_flatten(override.change), test_top1=_stat(top1),
                 test_top5=_stat(top5), drop_top1=_stat(drop1), drop_top5=_stat(drop5),
                 reference=ref, delta_vs_reference=delta)
        )  # fmt: skip
    return out


def _baseline_row(baseline: Baseline, jobs: list[Job], start: tuple[float, float] | None) -> Row:
    """The full-precision row: its training job's settings, or, for a model trained elsewhere
    (an earlier job, a checkpoint, a pretrained model) and measured by the variants, only what
    is known of it: unquantized, named by where it came from."""
    source = (
        "baseline" if isinstance(baseline, TrainBaseline)
        else f"job {baseline.job}" if isinstance(baseline, JobBaseline)
        else "checkpoint" if isinstance(baseline, CheckpointBaseline)
        else "pretrained"
    )  # fmt: skip
    accuracy = dict(test_top1=_stat([start[0]] if start else []),
                    test_top5=_stat([start[1]] if start else []), drop_top1=None,
                    drop_top5=None)  # fmt: skip
    label = f"full precision ({source})"
    if jobs:
        specs = [spec_of(j) for j in jobs]
        return _row("FP", label, specs, jobs, baseline=True, settings={}, **accuracy)
    return Row(id="FP", label=label, baseline=True, settings={}, epochs=None, quan_lr="no",
               constr_w="none", constr_a="none", lr_base=None, jobs=[], finished=0,
               **accuracy)  # fmt: skip


def _probe_rows(
    exp: ExperimentSpec,
    by_variant: dict[int, list[Job]],
    done: dict[int, dict],
    start: tuple[float, float] | None,
) -> list[Row]:
    """Every layer quantized, then one row per probed layer: from the untrained probe job's
    result, or from each layer's fine-tuned job (variant 1, 2, ... in network order)."""
    options = exp.sensitivity or SensitivityOptions()
    first = by_variant.get(0, [])
    if not first:
        return []
    spec = spec_of(first[0])
    arch, q = spec.model.arch, spec.quantization
    names = layer_names(arch)
    levels = q.levels_by_layer(names)
    results = [done[j.id] for j in first if j.id in done]
    quantized = (q.weight, q.activation)
    out = [_probe_row("all", "every layer", options, spec, first, results, start, quantized)]
    for i, layer in enumerate(options.probed(arch, q), start=1):
        if options.fine_tune:
            jobs = by_variant.get(i, [])
            found = [done[j.id] for j in jobs if j.id in done]
        else:
            jobs, found = first, _probe_of(results, layer)
        w, a = levels[layer]
        if layer == names[0] and a is not None:  # as the conversion applies it
            a = a.as_signed()
        out.append(_probe_row(str(i), layer, options, spec, jobs, found, start, (w, a)))
    return out


def _probe_of(results: list[dict[str, Any]], layer: str) -> list[dict[str, float]]:
    """The untrained probes of `layer` in the jobs' results, as fine-tuned jobs' results read."""
    probes = [p for r in results for p in r.get("sensitivity") or [] if p["layer"] == layer]
    return [{"final_top1": p["test_top1"], "final_top5": p["test_top5"]} for p in probes]


def _probe_row(
    rid: str,
    label: str,
    options: SensitivityOptions,
    spec: ServiceJobSpec,
    jobs: list[Job],
    results: list[dict],
    start: tuple[float, float] | None,
    levels: tuple[Any, Any],
) -> Row:
    """A sensitivity row: `levels` are the probed layer's (weight, activation)."""
    (w, a), layer = levels, label if rid != "all" else None
    top1, top5 = [r["final_top1"] for r in results], [r["final_top5"] for r in results]
    return Row(
        id=rid, label=label, baseline=False, layer=layer,
        settings={"layer": layer, "mode": options.mode, "fine_tune": options.fine_tune},
        epochs=options.fine_tune, quan_lr=_quan_lr(spec.quantization),
        constr_w=str(w) if w else "none", constr_a=str(a) if a else "none",
        lr_base=spec.training.lr, jobs=[j.id for j in jobs],
        finished=sum(j.status == JobStatus.succeeded for j in jobs), test_top1=_stat(top1),
        test_top5=_stat(top5), drop_top1=_stat([start[0] - v for v in top1] if start else []),
        drop_top5=_stat([start[1] - v for v in top5] if start else []),
    )  # fmt: skip


def _start(baseline_jobs: list[Job], jobs: list[Job], done: dict) -> tuple[float, float] | None:
    """The baseline's accuracy: its job's final one, else what variants measured of it."""
    for j in baseline_jobs:
        if j.id in done:
            return done[j.id]["final_top1"], done[j.id]["final_top5"]
    for j in jobs:
        result = done.get(j.id)
        if result and result.get("init_top1") is not None:
            return result["init_top1"], result["init_top5"]
    return None


# --------------------------------------------------------------------------- the tables

COLUMNS = ["ID", "quan_lr", "constr_w", "constr_a", "lr_base", "epoch", "test_acc", "drop_acc",
           "acc_top5", "drop_top5"]  # fmt: skip


def _fmt(stat: Stat | None) -> str:
    if stat is None:
        return ""
    return fixed(stat.mean) + (f" ± {fixed(stat.std)}" if stat.std is not None else "")


def _signed(value: float) -> str:
    shown = fixed(value)
    return shown if shown.startswith("-") else f"+{shown}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


PROBE_COLUMNS = ["ID", "layer", "constr_w", "constr_a", "epoch", "test_acc", "drop_acc",
                 "acc_top5", "drop_top5"]  # fmt: skip


def table(table_rows: list[Row]) -> list[list[str]]:
    """The reference's columns, and ref_acc / delta when any row has a reference, and settings
    when a row has some the columns do not show; a sensitivity experiment's name the layer
    instead of quan_lr and lr_base."""
    if any(r.settings.get("mode") for r in table_rows):
        return [PROBE_COLUMNS] + [
            [r.id, r.label, r.constr_w, r.constr_a, _num(r.epochs), _fmt(r.test_top1),
             _fmt(r.drop_top1), _fmt(r.test_top5), _fmt(r.drop_top5)]
            for r in table_rows
        ]  # fmt: skip
    refs = any(r.reference for r in table_rows)
    settings = any(r.other_settings for r in table_rows)
    head = COLUMNS + (["ref_acc", "delta"] if refs else []) + (["settings"] if settings else [])
    body = []
    for r in table_rows:
        line = [r.id, r.quan_lr, r.constr_w, r.constr_a, _num(r.lr_base), _num(r.epochs)]
        line += [_fmt(r.test_top1), _fmt(r.drop_top1), _fmt(r.test_top5), _fmt(r.drop_top5)]
        if refs:
            line += [
                fixed(r.reference.test_top1) if r.reference else "",
                _signed(r.delta_vs_reference) if r.delta_vs_reference is not None else "",
            ]
        if settings:
            line.append(r.other_settings)
        body.append(line)
    return [head, *body]


def markdown(table_rows: list[Row]) -> str:
    head, *body = table(table_rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    body = [[cell.replace("|", "\\|") for cell in line] for line in body]  # a | in a value
    return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in body]) + "\n"


def csv_text(table_rows: list[Row]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table(table_rows))
    return out.getvalue()


def status(jobs: list[Job]) -> str:
    """queued or running while any job is; then succeeded, failed, or cancelled."""
    states = {j.status for j in jobs}
    if JobStatus.running in states or (JobStatus.queued in states and len(states) > 1):
        return "running"
    if states == {JobStatus.queued}:
        return "queued"
    if states == {JobStatus.succeeded}:
        return "succeeded"
    return "failed" if JobStatus.failed in states else "cancelled"
