"""The records a run produces, defined once: an epoch's metrics and the run's result.

The training loop makes them, ``metrics.json`` holds them, the service stores them (one column
per ``EpochMetrics`` field) and returns them, and both CLIs print them with ``table_header`` and
``table_row``. Adding a metric is one field here plus one migration for its column (and an
entry in ``COLUMNS`` to show it in the table).
"""

from __future__ import annotations

import math
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class QuantizerHealth(_Record):
    """One quantized tensor at the end of an epoch (see lsq.health)."""

    layer: str = Field(description="The quantized layer's module name")
    kind: Literal["weight", "activation"]
    step: float = Field(description="The step size (the mean over channels when per channel)")
    zero: float = Field(description="Share of the values quantized to 0")
    levels: list[int] = Field(description="The level set, when it has at most 16 levels")
    shares: list[float] = Field(description="Share of the values at each of `levels`")
    signed: bool = Field(
        False,
        description="An activation whose input held negative values on its first batch: its "
        "unsigned set became the signed one with as many levels",
    )
    offset: float | None = Field(
        None, description="The learned LSQ+ offset (activation_offset), where there is one"
    )


def quantizer_warnings(history: list[list[QuantizerHealth]]) -> list[str]:
    """What the quantizers' health over a run's epochs (oldest first) says is wrong: weights
    collapsed to 0, a step that exploded or stopped moving."""
    if not history or not history[-1]:
        return []
    steps: dict[tuple[str, str], list[float]] = defaultdict(list)
    for epoch in history:
        for h in epoch:
            steps[(h.layer, h.kind)].append(h.step)
    found = []
    for h in history[-1]:
        where, seen = f"{h.layer} ({h.kind})", steps[(h.layer, h.kind)]
        if h.kind == "weight" and h.zero > 0.95:
            found.append(
                f"{where}: {100 * h.zero:.0f}% of the weights are 0, the step is too large "
                "(lower the step's learning rate, or check its initialisation)"
            )
        if h.step > 10 * seen[0]:
            found.append(f"{where}: the step grew from {seen[0]:.3g} to {h.step:.3g}")
        last = seen[-3:]
        if len(last) == 3 and max(last) - min(last) <= 1e-6 * h.step:
            found.append(f"{where}: the step has not moved for 3 epochs ({h.step:.3g})")
    return found


class EpochMetrics(_Record):
    """One finished epoch."""

    epoch: int = Field(description="1-based")
    train_loss: float
    train_top1: float = Field(description="Training accuracy in percent")
    test_loss: float
    test_top1: float = Field(description="Test top-1 accuracy in percent")
    test_top5: float = Field(description="Test top-5 accuracy in percent")
    lr: float = Field(description="Learning rate of the epoch")
    seconds: float = Field(description="Wall time of the epoch, evaluation included")
    images_per_second: float = Field(description="Training throughput")
    eval_seconds: float | None = Field(None, description="Of `seconds`, the test evaluation")
    teacher_seconds: float | None = Field(
        None, description="Of `seconds`, the distillation teacher's forward passes"
    )
    compile_seconds: float | None = Field(
        None, description="Of `seconds`, torch.compile's (not counted in images_per_second)"
    )
    quantizers: list[QuantizerHealth] | None = Field(
        None, description="Each quantized tensor's step and share of values per level"
    )


class LayerSensitivity(_Record):
    """One probe of a sensitivity job (lsq.sensitivity): a layer alone quantized, or alone float."""

    layer: str = Field(description="The probed layer's module name")
    weight: str | None = Field(description="Its weight levels as the spec gives them; null: float")
    activation: str | None = Field(description="Its input levels; null: float")
    parameters: int = Field(description="Its parameter count (what more bits there would cost)")
    test_top1: float
    test_top5: float
    drop_top1: float = Field(description="The float model's top-1 minus this probe's, in points")
    drop_top5: float


class Confusion(_Record):
    """One of the commonest mistakes on the test set: images of `true` taken for `predicted`."""

    true: str
    predicted: str
    count: int
    share: float = Field(description="Of the test images of `true`, in percent")


class ClassReport(_Record):
    """The test set class by class, from the finished model (at most 1000 classes)."""

    classes: list[str]
    top1: list[float | None] = Field(
        description="Per class, top-1 in percent (null: no test image of it)"
    )
    confusions: list[Confusion] = Field(description="The commonest mistakes, most first (10)")

    @classmethod
    def of(cls, confusion: list[list[int]], names: list[str]) -> ClassReport:
        """From a confusion matrix, rows the true class and columns the predicted one."""
        totals = [sum(row) for row in confusion]
        top1 = [100 * confusion[c][c] / t if t else None for c, t in enumerate(totals)]
        mistakes = sorted(
            (
                (-n, t, p)
                for t, row in enumerate(confusion)
                for p, n in enumerate(row)
                if p != t and n > 0
            ),
        )[:CONFUSIONS]
        confusions = [
            Confusion(true=names[t], predicted=names[p], count=-n, share=100 * -n / totals[t])
            for n, t, p in mistakes
        ]
        return cls(classes=names, top1=top1, confusions=confusions)


CONFUSIONS = 10


class DataSummary(_Record):
    """What the job's data was: its normalisation, and the files an image folder skipped."""

    mean: list[float]
    std: list[float]
    skipped_images: int = Field(0, description="Image files that did not decode (image_folder)")


class RunResult(_Record):
    """A finished run: final and best test accuracy, and the drop against its starting model."""

    final_top1: float
    final_top5: float
    best_top1: float
    best_top5: float
    best_epoch: int
    epochs: int = Field(description="Epochs trained")
    init_top1: float | None = Field(None, description="Accuracy of the starting model")
    init_top5: float | None = None
    drop_top1: float | None = Field(None, description="init_top1 - final_top1, in points")
    drop_top5: float | None = None
    model_bits: int | None = Field(
        None,
        description="Quantized jobs: the model's size in bits (codes at their level sets' "
        "bit width, steps and the rest in float32)",
    )
    compression: float | None = Field(None, description="float32 size / model_bits")
    per_class: ClassReport | None = Field(None, description="Per-class accuracy and confusions")
    data: DataSummary | None = None
    sensitivity: list[LayerSensitivity] | None = Field(
        None,
        description="Sensitivity jobs: one probe per layer; final_top1 is then the network "
        "with every layer quantized as the spec says, without training",
    )

    @classmethod
    def of(cls, epochs: list[EpochMetrics], init: Accuracy | None) -> RunResult:
        last = epochs[-1]
        best = max(epochs, key=lambda e: e.test_top1)
        start = {}
        if init is not None:
            start = dict(
                init_top1=init.top1,
                init_top5=init.top5,
                drop_top1=init.top1 - last.test_top1,
                drop_top5=init.top5 - last.test_top5,
            )
        return cls(
            final_top1=last.test_top1,
            final_top5=last.test_top5,
            best_top1=best.test_top1,
            best_top5=best.test_top5,
            best_epoch=best.epoch,
            epochs=len(epochs),
            **start,
        )

    @classmethod
    def of_probes(
        cls, whole: Accuracy, start: Accuracy, probes: list[LayerSensitivity]
    ) -> RunResult:
        """A sensitivity job's result: `whole` is every layer quantized, untrained."""
        return cls(
            final_top1=whole.top1,
            final_top5=whole.top5,
            best_top1=whole.top1,
            best_top5=whole.top5,
            best_epoch=0,
            epochs=0,
            init_top1=start.top1,
            init_top5=start.top5,
            drop_top1=start.top1 - whole.top1,
            drop_top5=start.top5 - whole.top5,
            sensitivity=probes,
        )


class Accuracy(_Record):
    """An evaluation: test loss and top-1/top-5 accuracy in percent."""

    loss: float
    top1: float
    top5: float


class RunMetrics(_Record):
    """``metrics.json``: the epochs so far, and the result once the run has ended."""

    epochs: list[EpochMetrics] = []
    result: RunResult | None = None


def fixed(value: float, digits: int = 2) -> str:
    """`value` with `digits` decimals, a half rounded away from zero, as the dashboard's
    toFixed rounds it: Python's format rounds a half to even (3.125: "3.12", the dashboard
    "3.13"). Both round the float's exact value, so they agree on every number."""
    if not math.isfinite(value):
        return f"{value:.{digits}f}"
    exact = Decimal(value + 0.0)  # + 0.0: -0.0 is 0.0, as toFixed writes it
    return str(exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


# (field, heading, width, how to show it): the one table of epochs, for `lsq run` and the
# service's clients; numbers as the dashboard's table shows them.
COLUMNS = (
    ("epoch", "epoch", 5, str),
    ("train_loss", "train_loss", 10, lambda v: fixed(v, 4)),
    ("train_top1", "train_top1", 10, fixed),
    ("test_loss", "test_loss", 9, lambda v: fixed(v, 4)),
    ("test_top1", "test_top1", 9, fixed),
    ("test_top5", "test_top5", 9, fixed),
    ("lr", "lr", 8, lambda v: f"{v:.5f}"),
    ("images_per_second", "img/s", 7, lambda v: f"{v:.0f}"),
    ("seconds", "seconds", 7, lambda v: fixed(v, 1)),
)


def table_header() -> str:
    return " ".join(f"{head:>{width}}" for _, head, width, _ in COLUMNS)


def table_row(m: EpochMetrics) -> str:
    return " ".join(f"{show(getattr(m, name)):>{width}}" for name, _, width, show in COLUMNS)


def epoch_table(epochs: list[EpochMetrics]) -> str:
    return "\n".join([table_header(), *map(table_row, epochs)])


def sensitivity_table(probes: list[LayerSensitivity], mode: str) -> str:
    """A sensitivity job's probes, one line per layer, the largest drop marked."""
    head = "only this layer quantized" if mode == "quantize_one" else "only this layer float"
    worst = max(p.drop_top1 for p in probes) if probes else 0
    lines = [
        f"{'layer':<24} {'weight':>11} {'input':>11} {'parameters':>10} {'top-1':>6} {'drop':>6}"
        f"  ({head})"
    ]
    for p in probes:
        mark = "  <- largest" if p.drop_top1 == worst else ""
        lines.append(
            f"{p.layer:<24} {p.weight or 'float':>11} {p.activation or 'float':>11} "
            f"{p.parameters:>10,} {fixed(p.test_top1):>6} {fixed(p.drop_top1):>6}{mark}"
        )
    return "\n".join(lines)


def summary_line(title: str, result: RunResult) -> str:
    """One line that says what a run was (`JobSpec.describe()`) and what it kept."""
    every = " with every layer quantized, untrained" if result.sensitivity is not None else ""
    line = f"{title}: test top-1 {fixed(result.final_top1)}%{every}"
    if result.drop_top1 is not None:
        line += f", drop {fixed(result.drop_top1)} points from {fixed(result.init_top1)}%"
    if result.model_bits is not None:
        line += (
            f"; {result.model_bits / 8e6:.3g} MB, {result.compression:.1f}x smaller than float32"
        )
    return line


def classes_line(result: RunResult) -> str | None:
    """The three worst classes and the commonest mistake, and the files an image folder
    skipped; None when the result has neither."""
    parts = []
    report = result.per_class
    if report is not None:
        known = [(t, c) for c, t in zip(report.classes, report.top1, strict=True) if t is not None]
        worst = ", ".join(f"{c} {fixed(t)}%" for t, c in sorted(known)[:3])
        parts.append(f"worst classes: {worst}")
        if report.confusions:
            m = report.confusions[0]
            share = f"{fixed(m.share)}% of {m.true}"
            parts.append(f"commonest mistake: {m.true} taken for {m.predicted} ({share})")
    if result.data is not None and result.data.skipped_images:
        parts.append(f"{result.data.skipped_images} image files did not decode and were skipped")
    return "; ".join(parts) or None
