"""The files a run writes in its output folder (torch-free: the API serves them by name), and
the one way they are written: whole, or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

CHECKPOINT = "checkpoint.pt"  # everything needed to resume, written after every epoch
METRICS = "metrics.json"  # {"epochs": [...], "result": {...}}
MODEL = "model.pt"  # the final float state dict: another job's model.init
MODEL_INT = "model-int.pt"  # the integer export of a quantized job
MODEL_ONNX = "model.onnx"  # a quantized job as an ONNX graph (QuantizeLinear/DequantizeLinear)
PLOT, PLOT_SVG = "plot.png", "plot.svg"  # accuracy and loss per epoch
SENSITIVITY_PLOT = "sensitivity.png"  # drop per probed layer (sensitivity jobs)
QUANTIZER_PLOT = "quantizers.png"  # step sizes and shares at zero per epoch (quantized jobs)
BOARD = "tensorboard"  # TensorBoard event files, a folder (lsq.board)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file beside `path`, then rename: readers and a crash never see
    half a file, and two writers never share a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
