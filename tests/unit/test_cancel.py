"""A cancel after the last training batch still stops the run: during the evaluation, before
the final files or between them. A cancelled run returns no result and writes none."""

import json

import pytest
from jobs import TERNARY
from jobs import synthetic_spec as spec

from lsq.train import Cancelled, run


def result_written(out) -> bool:
    metrics = out / "metrics.json"
    return metrics.is_file() and json.loads(metrics.read_text()).get("result") is not None


def test_a_cancel_after_the_last_training_batch_stops_the_evaluation(tmp_path):
    progress, epochs = [], []
    trained = lambda: progress[-1:] == [(1, 1.0)]  # noqa: E731  the last batch is done
    with pytest.raises(Cancelled, match="evaluation"):
        run(spec(epochs=1), tmp_path, on_progress=lambda *p: progress.append(p),
            on_epoch=epochs.append, should_cancel=trained)  # fmt: skip
    assert epochs == [] and not (tmp_path / "model.pt").exists()
    assert not result_written(tmp_path)


def test_a_cancel_after_the_last_epoch_writes_no_final_file(tmp_path):
    epochs = []
    with pytest.raises(Cancelled, match="final files"):
        run(spec(epochs=1), tmp_path, on_epoch=epochs.append, should_cancel=lambda: bool(epochs))
    assert len(epochs) == 1 and not (tmp_path / "model.pt").exists()
    assert not result_written(tmp_path)  # the epoch is kept (checkpoint), the run not ended


def test_a_cancel_between_exports_stops_before_the_next(tmp_path):
    exported = lambda: (tmp_path / "model.pt").exists()  # noqa: E731
    with pytest.raises(Cancelled, match="final files"):
        run(spec(epochs=1, quant=TERNARY), tmp_path, should_cancel=exported)
    assert not (tmp_path / "model-int.pt").exists() and not (tmp_path / "model.onnx").exists()
    assert not result_written(tmp_path)
