"""An experiment's jobs read back as its results: one `Row` per line of the table (the
baseline, then each variant over its seeds, or each probed layer): accuracy, the drop from the
baseline's, mean and spread over seeds, the published reference; and the experiment's status."""

from __future__ import annotations

import functools
import statistics
from typing import Any

from pydantic import BaseModel, Field, computed_field

from api.service.experiments.overrides import flatten, key_values, overrides
from api.service.experiments.request import (
    Baseline,
    CheckpointBaseline,
    ExperimentSpec,
    JobBaseline,
    Reference,
    SensitivityOptions,
    TrainBaseline,
)
from api.service.job_spec import ServiceJobSpec
from api.service.models import Job, JobStatus
from api.service.store.jobs import spec_of
from lsq.archs import layer_names
from lsq.spec import QuantizationSpec

# The baseline's test top-1 and top-5: what every row's drop is measured from.
Accuracy = tuple[float, float]


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
        return key_values({k: v for k, v in self.settings.items() if k not in IN_COLUMNS})


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
    baseline_accuracy = _baseline_accuracy(baseline_jobs, jobs, done)
    out = []
    if baseline_jobs or baseline_accuracy is not None:
        out.append(_baseline_row(exp.baseline, baseline_jobs, baseline_accuracy))
    if exp.kind == "sensitivity":
        return out + _probe_rows(exp, by_variant, done, baseline_accuracy)
    planned = overrides(exp)
    for index, variant_jobs in sorted(by_variant.items()):
        specs = [spec_of(j) for j in variant_jobs]
        override = planned[index]
        results = [done[j.id] for j in variant_jobs if j.id in done]
        top1 = [r["final_top1"] for r in results]
        top5 = [r["final_top5"] for r in results]
        ref = override.reference
        delta = round(statistics.fmean(top1) - ref.test_top1, DECIMALS) if ref and top1 else None
        label = override.name or specs[0].quantization.describe()
        out.append(
            _row(str(index + 1), label, specs, variant_jobs, baseline=False,
                 settings=flatten(override.change), test_top1=_stat(top1),
                 test_top5=_stat(top5), drop_top1=_drops(top1, baseline_accuracy, 0),
                 drop_top5=_drops(top5, baseline_accuracy, 1), reference=ref,
                 delta_vs_reference=delta)
        )  # fmt: skip
    return out


def _baseline_row(baseline: Baseline, jobs: list[Job], baseline_accuracy: Accuracy | None) -> Row:
    """The full-precision row: its training job's settings, or, for a model trained elsewhere
    (an earlier job, a checkpoint, a pretrained model) and measured by the variants, only what
    is known of it: unquantized, named by where it came from."""
    source = (
        "baseline" if isinstance(baseline, TrainBaseline)
        else f"job {baseline.job}" if isinstance(baseline, JobBaseline)
        else "checkpoint" if isinstance(baseline, CheckpointBaseline)
        else "pretrained"
    )  # fmt: skip
    top1, top5 = baseline_accuracy or (None, None)
    measured = dict(test_top1=_stat([top1] if top1 is not None else []),
                    test_top5=_stat([top5] if top5 is not None else []), drop_top1=None,
                    drop_top5=None)  # fmt: skip
    label = f"full precision ({source})"
    if jobs:
        specs = [spec_of(j) for j in jobs]
        return _row("FP", label, specs, jobs, baseline=True, settings={}, **measured)
    return Row(id="FP", label=label, baseline=True, settings={}, epochs=None, quan_lr="no",
               constr_w="none", constr_a="none", lr_base=None, jobs=[], finished=0,
               **measured)  # fmt: skip


def _probe_rows(
    exp: ExperimentSpec,
    by_variant: dict[int, list[Job]],
    done: dict[int, dict],
    baseline_accuracy: Accuracy | None,
) -> list[Row]:
    """Every layer quantized, then one row per probed layer: from the untrained probe job's
    result, or from each layer's fine-tuned job (variant 1, 2, ... in network order)."""
    options = exp.sensitivity or SensitivityOptions()
    first = by_variant.get(0, [])
    if not first:
        return []
    spec = spec_of(first[0])
    arch, q = spec.model.arch, spec.quantization
    names = layer_names(arch) or []  # validated: a probed network's layers are known
    levels = q.levels_by_layer(names)
    results = [done[j.id] for j in first if j.id in done]
    quantized = (q.weight, q.activation)
    out = [
        _probe_row(
            "all", "every layer", options, spec, first, results, baseline_accuracy, quantized
        )
    ]
    for i, layer in enumerate(options.probed(arch, q), start=1):
        if options.fine_tune:
            jobs = by_variant.get(i, [])
            found = [done[j.id] for j in jobs if j.id in done]
        else:
            jobs, found = first, _probe_of(results, layer)
        w, a = levels[layer]
        if layer == names[0] and a is not None:  # as the conversion applies it
            a = a.as_signed()
        out.append(_probe_row(str(i), layer, options, spec, jobs, found, baseline_accuracy, (w, a)))
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
    baseline_accuracy: Accuracy | None,
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
        test_top5=_stat(top5), drop_top1=_drops(top1, baseline_accuracy, 0),
        drop_top5=_drops(top5, baseline_accuracy, 1),
    )  # fmt: skip


def _drops(values: list[float], baseline_accuracy: Accuracy | None, top: int) -> Stat | None:
    """How many points each of `values` lies below the baseline's top-1 (`top` 0) or top-5."""
    return _stat([baseline_accuracy[top] - v for v in values] if baseline_accuracy else [])


def _baseline_accuracy(baseline_jobs: list[Job], jobs: list[Job], done: dict) -> Accuracy | None:
    """The baseline's accuracy: its job's final one, else what variants measured of it."""
    for j in baseline_jobs:
        if j.id in done:
            return done[j.id]["final_top1"], done[j.id]["final_top5"]
    for j in jobs:
        result = done.get(j.id)
        if result and result.get("init_top1") is not None:
            return result["init_top1"], result["init_top5"]
    return None


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
