"""Plots people would rather look at than read: a run's curves, its quantizers' health, an
experiment's variants side by side, and the accuracy drop per layer of a sensitivity probe.
Files only (matplotlib's Agg backend), PNG and SVG."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import atomic_file
from .metrics import EpochMetrics, fixed
from .text import cut


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    return plt


def _literal(text: str) -> str:
    """A user's text (a name, a layer) shown as written: each "$" escaped, so that it is not
    read as math (math stays on for matplotlib's own labels, such as a log axis's 10^0)."""
    return text.replace("$", r"\$")


def _save(fig: Any, paths: Sequence[Path]) -> None:
    """Each file written whole, then renamed: a reader never sees half a picture."""
    if fig.get_layout_engine() is None:  # one laid out as it was made keeps its layout
        fig.tight_layout()
    for path in paths:
        with atomic_file(path) as f:
            fig.savefig(f, format=path.suffix[1:])
    _pyplot().close(fig)


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def run_curves(epochs: list[EpochMetrics], paths: Sequence[Path], title: str = "") -> None:
    """Accuracy (train and test top-1, test top-5) and loss per epoch, side by side."""
    fig, (acc, loss) = _pyplot().subplots(1, 2, figsize=(10, 4), dpi=100)
    x = [e.epoch for e in epochs]
    acc.plot(x, [e.test_top1 for e in epochs], "o-", label="test top-1")
    acc.plot(x, [e.test_top5 for e in epochs], ".--", label="test top-5", alpha=0.6)
    acc.plot(x, [e.train_top1 for e in epochs], ".:", label="train top-1", alpha=0.6)
    acc.set(ylabel="accuracy (%)", ylim=(0, 100), title="accuracy")
    acc.legend(loc="lower right")
    loss.plot(x, [e.test_loss for e in epochs], "o-", label="test")
    loss.plot(x, [e.train_loss for e in epochs], ".:", label="train", alpha=0.6)
    loss.set(ylabel="cross-entropy loss", title="loss")
    loss.legend(loc="upper right")
    for ax in (acc, loss):
        _epoch_axis(ax)
    fig.suptitle(_literal(title))
    _save(fig, paths)


def quantizer_health(epochs: list[EpochMetrics], paths: Sequence[Path], title: str = "") -> None:
    """Step size of every quantized tensor per epoch, and the share of each layer's weights at
    zero (over 95% means the step is too large for those weights)."""
    fig, (steps, zeros) = _pyplot().subplots(1, 2, figsize=(11, 4.5), dpi=100)
    series: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for e in epochs:
        for h in e.quantizers or []:
            series.setdefault((h.layer, h.kind), []).append((e.epoch, h.step, h.zero))
    for (layer, kind), points in series.items():
        x = [p[0] for p in points]
        style = "-" if kind == "weight" else "--"
        steps.plot(x, [p[1] for p in points], style, linewidth=1, alpha=0.8)
        if kind == "weight":
            zeros.plot(x, [100 * p[2] for p in points], "-", linewidth=1, label=_literal(layer))
    steps.set(yscale="log", ylabel="step size (log)", title="steps: weights —, activations --")
    zeros.axhline(95, color="red", linestyle=":", linewidth=1, label="95%: the step is too large")
    zeros.set(ylabel="weights at 0 (%)", ylim=(0, 100), title="share of each layer's weights at 0")
    weights = sum(kind == "weight" for _, kind in series)
    if weights <= 24:  # beyond that a legend hides the plot
        zeros.legend(fontsize=6, ncol=2, loc="lower left")
    for ax in (steps, zeros):
        _epoch_axis(ax)
    fig.suptitle(_literal(title))
    _save(fig, paths)


@dataclass(frozen=True)
class Curve:
    """One row of an experiment: its seeds' test top-1 per epoch."""

    label: str
    runs: list[list[EpochMetrics]]
    baseline: bool = False
    start: int = 0  # epochs before this run's first: a variant continues its baseline


LEGEND = 80  # characters of a legend's line: a long variant's settings must not hide the plot


def experiment_curves(curves: list[Curve], paths: Sequence[Path], title: str = "") -> None:
    """Test top-1 per epoch, one line per variant (the mean over seeds, with their range as a
    band), the baseline dashed."""
    _save(experiment_figure(curves, title), paths)


LEGEND_LINE = 0.17  # inches a line of the legend (font size 8) takes


def experiment_figure(curves: list[Curve], title: str = "") -> Any:
    """experiment_curves' figure, its legend below the axes: it hides no row's line, and the
    figure grows with the number of rows."""
    labels = [cut(c.label, LEGEND) for c in curves]
    columns = 2 if len(curves) > 1 and max(map(len, labels)) <= LEGEND // 2 else 1
    lines = -(-len(curves) // columns)
    fig, ax = _pyplot().subplots(
        figsize=(8, 5 + LEGEND_LINE * lines), dpi=100, layout="constrained"
    )
    for curve, label in zip(curves, labels, strict=True):
        _mean_line(ax, curve, _literal(label))
    ax.set(ylabel="test top-1 accuracy (%)", title=_literal(title))
    _epoch_axis(ax)
    if any(curve.start for curve in curves):
        ax.set_xlabel("epoch (the variants continue from the baseline's final model)")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", fontsize=8, ncols=columns)
    return fig


def _mean_line(ax: Any, curve: Curve, label: str) -> None:
    """A row's mean over seeds per epoch, their range as a band; nothing before its first."""
    by_epoch: dict[int, list[float]] = {}
    for run in curve.runs:
        for e in run:
            by_epoch.setdefault(e.epoch, []).append(e.test_top1)
    if not by_epoch:
        return
    epochs = sorted(by_epoch)
    x = [curve.start + e for e in epochs]
    mean = [statistics.fmean(by_epoch[e]) for e in epochs]
    style = dict(linestyle="--", color="black") if curve.baseline else dict(marker=".")
    (line,) = ax.plot(x, mean, label=label, **style)
    if len(curve.runs) > 1:
        low, high = [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs]
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)


@dataclass(frozen=True)
class Bar:
    """One probed layer: its drop in test top-1 (mean over seeds, and their spread)."""

    layer: str
    drop: float
    std: float | None = None


PROBED = {
    "quantize_one": "only this layer quantized",
    "float_one": "every other layer quantized, this one float",
}


def sensitivity_bars(
    bars: list[Bar], mode: str, paths: Sequence[Path], title: str = "", whole: float | None = None
) -> None:
    """One horizontal bar per layer, in network order from the top: the drop in test top-1
    against the float network; `whole`, the drop with every layer quantized, as a line."""
    fig, ax = _pyplot().subplots(figsize=(8, 1.5 + 0.28 * max(len(bars), 1)), dpi=100)
    y = range(len(bars))
    errors = [b.std or 0 for b in bars] if any(b.std for b in bars) else None
    ax.barh(y, [b.drop for b in bars], xerr=errors, color="tab:red", alpha=0.75)
    ax.set_yticks(list(y), [_literal(b.layer) for b in bars], fontsize=8)
    ax.invert_yaxis()
    if whole is not None:
        label = f"every layer quantized: {fixed(whole)}"
        ax.axvline(whole, color="black", linestyle="--", label=label)
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"drop in test top-1 (points), {PROBED[mode]}")
    ax.set_title(_literal(textwrap.fill(title, 80)), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, paths)
