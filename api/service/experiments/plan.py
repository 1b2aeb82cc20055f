"""An experiment's jobs: `plan` turns an `ExperimentSpec` into job specs (the baseline's to
train, then one per variant and seed), checked as the request has them; the baseline's rules
(where its model comes from, what makes an earlier job one) and how each variant starts from
it and learns from it live here too."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from api.service.errors import InvalidField
from api.service.experiments.overrides import (
    Override,
    flatten,
    key_values,
    merge,
    overrides,
    paths_apart,
    validated,
)
from api.service.experiments.request import (
    MAX_NEW_NAME,
    CheckpointBaseline,
    ExperimentSpec,
    JobBaseline,
    PretrainedBaseline,
    Reference,
    TrainBaseline,
)
from api.service.job_spec import TEACHER, ServiceJobSpec, has_a_model, pretrained_problem
from api.service.models import Job, JobStatus
from api.service.store.jobs import spec_of
from lsq.text import cut

# ------------------------------------------------------------------- the baseline's model


@dataclass(frozen=True)
class TrainedHere:
    """The experiment trains its baseline: this job, whose id is known once it is stored."""

    spec: ServiceJobSpec


@dataclass(frozen=True)
class FromJob:
    """A job's final model: an earlier job of the owner's, or the baseline trained here."""

    job_id: int

    @property
    def init(self) -> dict[str, int]:
        return {"job": self.job_id}


@dataclass(frozen=True)
class FromCheckpoint:
    """A model.pt under the data roots (the route checks that it may be read)."""

    path: str

    @property
    def init(self) -> str:
        return self.path


@dataclass(frozen=True)
class Pretrained:
    """torchvision's ImageNet weights."""

    @property
    def init(self) -> str:
        return "pretrained"


# A model that exists: what every variant starts from (its model.init) and, with `distill`,
# learns from (its teacher).
BaselineModel = FromJob | FromCheckpoint | Pretrained
BaselineSource = TrainedHere | BaselineModel


@dataclass(frozen=True)
class Variant:
    where: str  # the request's field it came from: grid or variants.N
    index: int  # 0-based; the table's ID is index + 1
    reference: Reference | None
    specs: list[ServiceJobSpec]  # one per seed, model.init still unset


@dataclass(frozen=True)
class Plan:
    source: BaselineSource
    variants: list[Variant]
    distill: dict[str, float] | None = None  # the variants' training.distill, but the teacher

    @property
    def baseline(self) -> ServiceJobSpec | None:
        """The job to train, for {train: true}."""
        return self.source.spec if isinstance(self.source, TrainedHere) else None

    def specs(self) -> list[tuple[str, ServiceJobSpec]]:
        """Every job spec with the request's field it came from."""
        out = [("baseline", self.baseline)] if self.baseline else []
        return out + [(v.where, spec) for v in self.variants for spec in v.specs]

    def jobs_from(self, model: BaselineModel) -> list[tuple[int, ServiceJobSpec]]:
        """Every variant's job specs, each with its variant's index, starting from `model` and,
        with `distill`, taught by it."""
        return [(v.index, _from_baseline(spec, model, self.distill))
                for v in self.variants for spec in v.specs]  # fmt: skip

    def check_baseline_job(self, job: Job | None, owner: str) -> None:
        """A baseline job (`source` FromJob; `job` its row, None if there is none) is the
        owner's, succeeded, full precision, with a model the variants can start from."""
        assert isinstance(self.source, FromJob)
        job_id = self.source.job_id
        if job is None or job.owner != owner:
            raise InvalidField("baseline.job", f"job {job_id} does not exist")
        if job.status != JobStatus.succeeded:
            raise InvalidField("baseline.job", f"job {job_id} is {job.status}, not succeeded")
        has_a_model("baseline.job", job, self.variants[0].specs[0])
        if _quantized(job):
            raise InvalidField("baseline.job", f"job {job_id} is quantized; a baseline is the "
                               "full-precision model the variants start from")  # fmt: skip


def _from_baseline(
    spec: ServiceJobSpec, model: BaselineModel, distill: dict[str, float] | None
) -> ServiceJobSpec:
    """A variant's spec starting from the baseline's model (and, with `distill`, taught by it)."""
    data = spec.model_dump(mode="json")
    data["model"]["init"] = model.init
    if distill is not None:
        data["training"]["distill"] = {**distill, "teacher": model.init}
    return ServiceJobSpec.model_validate(data)


def _quantized(job: Job) -> bool:
    """Whether the job's stored spec quantizes anything (one the current model refuses reads as
    quantized: it cannot be shown as full precision)."""
    try:
        return spec_of(job).quantization.enabled
    except ValidationError:
        return True


# ---------------------------------------------------------------------------- the plan


def plan(exp: ExperimentSpec, max_jobs: int) -> Plan:
    """The experiment's jobs, each validated as a job spec (InvalidField names the first bad
    field as the request has it: `grid.quantization.weight`, `variants.2.training.lr`)."""
    _check_kind_fields(exp)
    if len(exp.name) > MAX_NEW_NAME:  # stored ones may be longer: reads never re-plan
        raise InvalidField("name", f"at most {MAX_NEW_NAME} characters: its jobs carry it")
    if "name" in exp.base:  # it would be dropped without a word
        raise InvalidField("base.name", f"set by the experiment: {SET_BY_EXPERIMENT['name']}")
    base = validated(exp.base | {"name": exp.name}, "base")  # as given: no merge hides a value
    _check_pretrained(exp, base)
    seeds = exp.seeds or [base.training.seed]
    if len(set(seeds)) != len(seeds):
        raise InvalidField("seeds", "each seed once")
    trained = isinstance(exp.baseline, TrainBaseline)
    limit = JobLimit(exp, len(seeds), max_jobs - trained, max_jobs)
    paths_apart(exp.grid or {})
    planned = overrides(exp, limit.check)  # counted before any is built
    for override in planned if exp.kind != "sensitivity" else []:  # ours
        _not_set_here(override.where, override.change, exp.distill is not None)
    source = _source(exp, seeds[0])
    variants = [_variant(exp, base, seeds, i, override) for i, override in enumerate(planned)]
    if exp.kind != "sensitivity":  # its rows are the network's layers, each once
        _each_once(variants, planned)
    return Plan(source, variants, exp.distill.model_dump() if exp.distill else None)


def _source(exp: ExperimentSpec, seed: int) -> BaselineSource:
    """Where the baseline's model comes from; to train here, its job spec: the base in full
    precision, with the baseline's training overrides and the first seed."""
    baseline = exp.baseline
    if isinstance(baseline, JobBaseline):
        return FromJob(baseline.job)
    if isinstance(baseline, CheckpointBaseline):
        return FromCheckpoint(baseline.checkpoint)
    if isinstance(baseline, PretrainedBaseline):
        return Pretrained()
    spec = merge(exp.base, {"training": baseline.training})
    spec |= {"name": f"{exp.name}/baseline", "quantization": {}}  # float, whatever the base
    spec.pop("sensitivity", None)
    spec["training"] = {**spec.get("training", {}), "seed": seed}
    return TrainedHere(validated(spec, "baseline"))


def _variant(
    exp: ExperimentSpec, base: ServiceJobSpec, seeds: list[int], index: int, override: Override
) -> Variant:
    """One row's jobs: the base with the override laid over it, once per seed."""
    where, change, name, reference = override
    label = name if exp.kind == "sensitivity" else str(index + 1)
    specs = []
    for seed in seeds:
        spec = merge(_variant_base(exp), change)
        if not isinstance(spec.get("training", {}), dict):
            raise InvalidField(f"{where}.training", "must be an object")
        spec["name"] = f"{exp.name}/{label}" + (f"/seed {seed}" if len(seeds) > 1 else "")
        spec["training"] = {**spec.get("training", {}), "seed": seed}
        specs.append(_starts_from(_validated_variant(spec, where), base, where))
    return Variant(where, index, reference, specs)


def _each_once(variants: list[Variant], planned: list[Override]) -> None:
    """Two variants that would run the same jobs (a grid value given twice, [-1, 0, 1] and
    [1, 0, -1]) are one variant paid for twice: refused, naming both as the request has them."""
    seen: dict[str, Variant] = {}
    for v in variants:  # unsorted: quantization.layers' order is meaningful (first match wins)
        jobs = v.specs[0].model_dump_json(exclude={"name"})
        if (first := seen.setdefault(jobs, v)) is not v:
            a, b = (_settings(planned[x.index].change) for x in (v, first))
            same = f"variant {v.index + 1} ({a}) would run the same jobs as variant "
            raise InvalidField(v.where, f"{same}{first.index + 1} ({b}); seeds repeat a variant")


def _settings(change: dict[str, Any]) -> str:
    """A variant's change as `key=value, ...`, cut short."""
    return cut(key_values(flatten(change)) or "the base", 200)


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


def _check_pretrained(exp: ExperimentSpec, base: ServiceJobSpec) -> None:
    """A pretrained baseline is every variant's model.init, and with `distill` its teacher."""
    if not isinstance(exp.baseline, PretrainedBaseline):
        return
    arch, dataset = base.model.arch, base.dataset.name
    if problem := pretrained_problem("model.init", arch, dataset):
        raise InvalidField("baseline.pretrained", problem)
    if exp.distill and (problem := pretrained_problem(TEACHER, arch, dataset)):
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
    for path in flatten(change):
        if distill and path.startswith("training.distill"):
            raise InvalidField(f"{where}.{path}", "set by the experiment: use `distill`")
        if path in SET_BY_EXPERIMENT or path.startswith("model.init."):
            why = SET_BY_EXPERIMENT.get(path, "the baseline")
            raise InvalidField(f"{where}.{path}", f"set by the experiment: use {why}")


def _check_kind_fields(exp: ExperimentSpec) -> None:
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


# What an untrained probe's spec is checked with: the experiment sets model.init when stored.
SOME_JOB = {"job": 1}


def _rows_field(exp: ExperimentSpec) -> str:
    return "grid" if exp.grid is not None else "variants"


def _validated_variant(spec: dict[str, Any], where: str) -> ServiceJobSpec:
    """A variant's spec, model.init unset; an untrained probe's is checked as it will run,
    from a model (the experiment sets which)."""
    if "sensitivity" not in spec:
        return validated(spec, where)
    checked = validated(merge(spec, {"model": {"init": SOME_JOB}}), where)
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
