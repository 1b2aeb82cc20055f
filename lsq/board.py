"""TensorBoard event files for every run, in its folder's `tensorboard/`: per epoch the metrics
as scalars, each quantizer's step size, and the share of its values at each level as a
histogram. `tensorboard --logdir` on a run folder, or on the artifacts root for every job.

Written by the process that writes the run's files (rank 0), after each epoch's checkpoint; a
write that fails is a warning, never the run's failure."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .files import BOARD
from .metrics import EpochMetrics, QuantizerHealth

log = logging.getLogger(__name__)

SCALARS = {  # tag: the EpochMetrics field
    "train/loss": "train_loss",
    "train/top1": "train_top1",
    "test/loss": "test_loss",
    "test/top1": "test_top1",
    "test/top5": "test_top5",
    "lr": "lr",
    "speed/images_per_second": "images_per_second",
    "speed/epoch_seconds": "seconds",
}


class Board:
    """One event file per training process, opened at its first epoch."""

    def __init__(self, out: Path) -> None:
        self.folder = out / BOARD
        self._writer: Any = None

    def epoch(self, metrics: EpochMetrics) -> None:
        try:
            self._write(metrics)
        except Exception:  # a board is a convenience: the run goes on without it
            log.exception("TensorBoard events for epoch %d could not be written", metrics.epoch)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _write(self, metrics: EpochMetrics) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only here

            self._writer = SummaryWriter(str(self.folder))
        w, step = self._writer, metrics.epoch
        for tag, field in SCALARS.items():
            if (value := getattr(metrics, field)) is not None:
                w.add_scalar(tag, value, step)
        for q in metrics.quantizers or []:
            w.add_scalar(f"step/{q.layer}/{q.kind}", q.step, step)
            if q.levels:
                w.add_histogram_raw(f"levels/{q.layer}/{q.kind}", global_step=step, **_shares(q))
        w.flush()


def _shares(q: QuantizerHealth) -> dict[str, Any]:
    """A histogram of the levels, each bucket one level wide and holding its share."""
    levels, shares = q.levels, q.shares
    return {
        "min": min(levels),
        "max": max(levels),
        "num": sum(shares),
        "sum": sum(level * share for level, share in zip(levels, shares, strict=True)),
        "sum_squares": sum(level**2 * share for level, share in zip(levels, shares, strict=True)),
        "bucket_limits": [level + 0.5 for level in levels],
        "bucket_counts": shares,
    }
