"""A run's folder: the checkpoint written after every epoch, metrics.json, and the final files.

``checkpoint.pt`` holds everything a resume needs (the trainer's state, the epochs so far and
the starting model's accuracy); at the end come ``model.pt`` (the float state dict, another
job's ``model.init``) and, for a quantized job, ``model-int.pt``. The plots (``plot.png``,
``plot.svg``, ``quantizers.png``) are drawn during the run too. A sensitivity job writes only
``sensitivity.png`` and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from . import checkpoint, export, onnx_export, plot
from .data import DatasetInfo
from .files import (
    CHECKPOINT,
    METRICS,
    MODEL,
    MODEL_INT,
    MODEL_ONNX,
    PLOT,
    PLOT_SVG,
    QUANTIZER_PLOT,
    SENSITIVITY_PLOT,
    atomic_file,
)
from .loop import Trainer
from .metrics import Accuracy, EpochMetrics, RunMetrics, RunResult
from .spec import SPEC_VERSION, JobSpec, upgrade_spec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Progress:
    """What a resume continues from."""

    trainer: dict[str, Any]  # Trainer.state_dict(): what it restores
    epochs: list[EpochMetrics]
    start: Accuracy | None  # the starting model's accuracy, measured before quantization


def save_progress(out: Path, spec: JobSpec, progress: Progress) -> None:
    """After every epoch: the checkpoint, then metrics.json (both written atomically)."""
    state = {
        "spec": spec.model_dump(mode="json"),
        "spec_version": SPEC_VERSION,
        **progress.trainer,
        "epochs": [e.model_dump() for e in progress.epochs],
        "init_metrics": progress.start.model_dump() if progress.start else None,
    }
    checkpoint.save_atomic(state, out / CHECKPOINT)
    write_metrics(out, RunMetrics(epochs=progress.epochs))


def saved_spec_version(out: Path) -> int:
    """The spec version the checkpoint in `out` was written at (1 when there is none)."""
    if not (out / CHECKPOINT).exists():
        return 1
    return _version(checkpoint.load(out / CHECKPOINT, lazy=True))


def _version(state: dict[str, Any]) -> int:
    """A checkpoint that records no spec version was written at version 1: upgrading from
    there fills only the fields its spec lacks."""
    return state.get("spec_version", 1)


def load_progress(out: Path, spec: JobSpec) -> Progress | None:
    """The progress saved in `out`, if any; refused when it belongs to another spec."""
    if not (out / CHECKPOINT).exists():
        return None
    state = checkpoint.load(out / CHECKPOINT)
    if not _same_spec(upgrade_spec(state["spec"], _version(state)), spec):
        raise ValueError(f"{out / CHECKPOINT} belongs to a different job spec; use a new folder")
    start = state["init_metrics"]
    return Progress(
        trainer={k: state[k] for k in Trainer.STATEFUL},
        epochs=_epochs(state),
        start=Accuracy.model_validate(start) if start else None,
    )


def _same_spec(saved: dict[str, Any], spec: JobSpec) -> bool:
    """Compared as specs, not as documents: a field added since with its default (a newer
    version of this code) still resumes the run."""
    try:
        return type(spec).model_validate(saved) == spec
    except ValueError:  # pydantic's ValidationError: no longer a valid spec at all
        return False


def saved_epochs(out: Path) -> list[EpochMetrics]:
    """The epochs of the checkpoint in `out` (none when there is no checkpoint yet)."""
    if not (out / CHECKPOINT).is_file():
        return []
    return _epochs(checkpoint.load(out / CHECKPOINT, lazy=True))


def _epochs(state: dict[str, Any]) -> list[EpochMetrics]:
    return [EpochMetrics.model_validate(e) for e in state["epochs"]]


def save_final(
    out: Path,
    spec: JobSpec,
    model: nn.Module,
    info: DatasetInfo,
    metrics: RunMetrics,
    before_each: Callable[[], None] = lambda: None,
) -> None:
    """The files of a finished run; metrics.json last, so its result marks the run complete.
    `before_each()` runs before each file (it may raise to stop there: a cancel)."""
    before_each()
    checkpoint.save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, out / MODEL)
    if spec.quantization.enabled:
        before_each()
        export.save_integer(model, spec, dataclasses.asdict(info), out / MODEL_INT)
        before_each()
        save_onnx(out, model, info)
    before_each()
    save_plots(out, spec, metrics.epochs)
    before_each()
    write_metrics(out, metrics)


def save_onnx(out: Path, model: nn.Module, info: DatasetInfo) -> None:
    """model.onnx, written whole; a model the exporter cannot take is a warning, never the
    run's failure (its model.pt and integer export stand)."""
    tmp = out / f".{MODEL_ONNX}.tmp"
    try:
        onnx_export.export_onnx(model, info.in_channels, info.image_size, tmp)
        os.replace(tmp, out / MODEL_ONNX)
    except ValueError as e:  # a network the export does not take (LSQ+ offsets, ...): said so
        log.warning("model.onnx is not written: %s", e)
        tmp.unlink(missing_ok=True)
    except Exception:
        log.exception("model.onnx could not be written")
        tmp.unlink(missing_ok=True)


def save_plots(out: Path, spec: JobSpec, epochs: list[EpochMetrics]) -> None:
    """The run's curves and, for a quantized job, its quantizers' health; a plot that cannot
    be drawn is a warning, never the run's failure."""
    title = spec.describe()
    try:
        plot.run_curves(epochs, [out / PLOT, out / PLOT_SVG], title)
        if spec.quantization.enabled:
            plot.quantizer_health(epochs, [out / QUANTIZER_PLOT], title)
    except Exception:
        log.exception("%s: the plots could not be drawn", spec.name)


def save_sensitivity(out: Path, spec: JobSpec, result: RunResult) -> None:
    """A sensitivity job's files: its bar plot, then metrics.json with the probes."""
    assert spec.sensitivity is not None and result.sensitivity is not None
    bars = [plot.Bar(p.layer, p.drop_top1) for p in result.sensitivity]
    try:
        plot.sensitivity_bars(
            bars, spec.sensitivity.mode, [out / SENSITIVITY_PLOT], spec.describe(), result.drop_top1
        )
    except Exception:
        log.exception("%s: the sensitivity plot could not be drawn", spec.name)
    write_metrics(out, RunMetrics(result=result))


def write_metrics(out: Path, metrics: RunMetrics) -> None:
    with atomic_file(out / METRICS, "w") as f:
        f.write(metrics.model_dump_json(indent=2))
