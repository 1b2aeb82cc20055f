"""Accuracy curves: what people would rather look at than read."""

from __future__ import annotations

from pathlib import Path

from .metrics import EpochMetrics


def accuracy_curve(epochs: list[EpochMetrics], path: Path, title: str = "") -> None:
    """Train and test top-1 (and test top-5) per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and workers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    x = [e.epoch for e in epochs]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(x, [e.test_top1 for e in epochs], "o-", label="test top-1")
    ax.plot(x, [e.test_top5 for e in epochs], ".--", label="test top-5", alpha=0.6)
    ax.plot(x, [e.train_top1 for e in epochs], ".:", label="train top-1", alpha=0.6)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title, ylim=(0, 100))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
