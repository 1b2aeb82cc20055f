"""The records a run produces, defined once: an epoch's metrics and the run's result.

The training loop makes them, ``metrics.json`` holds them, the service stores them (one column
per ``EpochMetrics`` field) and returns them, and both CLIs print them with ``table_header`` and
``table_row``. Adding a metric is one field here plus one migration for its column (and an
entry in ``COLUMNS`` to show it in the table).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


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


class Accuracy(_Record):
    """An evaluation: test loss and top-1/top-5 accuracy in percent."""

    loss: float
    top1: float
    top5: float


class RunMetrics(_Record):
    """``metrics.json``: the epochs so far, and the result once the run has ended."""

    epochs: list[EpochMetrics] = []
    result: RunResult | None = None


# (field, heading, format): the one table of epochs, for `lsq run` and the service's clients.
COLUMNS = (
    ("epoch", "epoch", "{:>5}"),
    ("train_loss", "train_loss", "{:>10.4f}"),
    ("train_top1", "train_top1", "{:>10.2f}"),
    ("test_loss", "test_loss", "{:>9.4f}"),
    ("test_top1", "test_top1", "{:>9.2f}"),
    ("test_top5", "test_top5", "{:>9.2f}"),
    ("lr", "lr", "{:>8.5f}"),
    ("images_per_second", "img/s", "{:>7.0f}"),
    ("seconds", "seconds", "{:>7.1f}"),
)


def table_header() -> str:
    widths = [len(fmt.format(0)) for _, _, fmt in COLUMNS]
    return " ".join(f"{head:>{w}}" for (_, head, _), w in zip(COLUMNS, widths, strict=True))


def table_row(m: EpochMetrics) -> str:
    return " ".join(fmt.format(getattr(m, name)) for name, _, fmt in COLUMNS)


def epoch_table(epochs: list[EpochMetrics]) -> str:
    return "\n".join([table_header(), *map(table_row, epochs)])


def summary_line(title: str, result: RunResult) -> str:
    """One line that says what a run was (`JobSpec.describe()`) and what it kept."""
    line = f"{title}: test top-1 {result.final_top1:.2f}%"
    if result.drop_top1 is not None:
        line += f", drop {result.drop_top1:.2f} points from {result.init_top1:.2f}%"
    return line
