"""The training loop on the synthetic dataset: learning, resume, cancellation, integer export."""

import json
import math

import pytest
import torch
import yaml
from jobs import TERNARY, TERNARY_ALL
from jobs import synthetic_spec as spec

from lsq import checkpoint, export
from lsq.cli import _resumed_spec
from lsq.convert import quantize_as_specified
from lsq.data import load_datasets
from lsq.loop import loader
from lsq.metrics import EpochMetrics, RunMetrics, RunResult
from lsq.networks import build_model
from lsq.train import Cancelled, run


@pytest.fixture(scope="module")
def fp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    seen = []
    result = run(spec(epochs=3), out, on_epoch=seen.append)
    return out, result, seen


def test_full_precision_learns_well_above_chance(fp_run):
    out, result, seen = fp_run
    assert [m.epoch for m in seen] == [1, 2, 3]
    assert all(isinstance(m, EpochMetrics) for m in seen) and isinstance(result, RunResult)
    assert seen[-1].test_top1 > 60  # 10 classes: chance is 10%
    assert all(0 < m.eval_seconds < m.seconds for m in seen)
    assert result.final_top1 == seen[-1].test_top1 and result.init_top1 is None
    assert (result.epochs, result.best_top1) == (3, max(m.test_top1 for m in seen))
    # cosine annealing over 3 epochs, stepped per epoch
    assert [m.lr for m in seen] == pytest.approx([0.05, 0.0375, 0.0125])
    metrics = RunMetrics.model_validate_json((out / "metrics.json").read_text())
    assert metrics.epochs == seen and metrics.result == result
    assert set(json.loads((out / "metrics.json").read_text())) == {"epochs", "result"}
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pt", "model.pt", "metrics.json"}
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "plot.svg").read_text().lstrip().startswith("<?xml")
    assert not (out / "model-int.pt").exists()


@pytest.mark.slow
def test_ternary_from_full_precision_learns_and_reports_the_drop(fp_run, tmp_path):
    fp_out, fp_result, seen = fp_run
    assert all(m.quantizers is None for m in seen)  # full precision: nothing to watch
    epochs = []
    result = run(
        spec(init=str(fp_out / "model.pt"), quant=TERNARY, lr=0.01),
        tmp_path,
        on_epoch=epochs.append,
    )
    # every epoch records each quantized tensor's health: 18 layers, weight and input
    for m in epochs:
        assert len(m.quantizers) == 36 and {q.kind for q in m.quantizers} == {
            "weight",
            "activation",
        }
        assert all(abs(sum(q.shares) - 1) < 1e-6 and q.step > 0 for q in m.quantizers)
    assert (tmp_path / "quantizers.png").read_bytes()[:4] == b"\x89PNG"
    # the starting model is evaluated first: its accuracy is the full-precision run's
    assert result.init_top1 == pytest.approx(fp_result.final_top1)
    assert result.final_top1 > 50
    assert result.drop_top1 == pytest.approx(result.init_top1 - result.final_top1)
    read_back_in_tensorboard(tmp_path, epochs)


def read_back_in_tensorboard(out, epochs: list[EpochMetrics]) -> None:
    """The run's event files, read by TensorBoard's own reader: every epoch's scalars, a step
    size per quantizer and its level shares as a histogram."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(
        str(out / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}
    )
    board.Reload()
    top1 = board.Scalars("test/top1")
    assert [e.step for e in top1] == [m.epoch for m in epochs]
    assert [e.value for e in top1] == pytest.approx([m.test_top1 for m in epochs])
    last = epochs[-1].quantizers[-1]
    steps = board.Scalars(f"step/{last.layer}/{last.kind}")
    assert steps[-1].value == pytest.approx(last.step)
    histogram = board.Histograms(f"levels/{last.layer}/{last.kind}")[-1].histogram_value
    assert histogram.bucket == pytest.approx(last.shares)
    assert histogram.bucket_limit == [level + 0.5 for level in last.levels]


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_integer_export_predicts_exactly_like_the_fake_quantized_model(
    fp_run, tmp_path, granularity
):
    fp_out, _, _ = fp_run
    quant = {**TERNARY_ALL, "granularity": granularity}
    s = spec(init=str(fp_out / "model.pt"), quant=quant, epochs=1, lr=0.01)
    run(s, tmp_path)
    data = torch.load(tmp_path / "model-int.pt", weights_only=True)
    codes = data["layers"]["layer1.0.conv1"]["weight_codes"]
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) <= {-1, 0, 1}
    steps = data["layers"]["layer1.0.conv1"]["weight_step"]
    assert steps.shape == ((16,) if granularity == "per_channel" else (1,))
    assert "layer1.0.conv1.weight" not in data["float_state"]

    int_model, loaded_spec = export.load_integer(tmp_path / "model-int.pt")
    assert loaded_spec == s
    # it is an integer export again, code for code
    again = export.integer_state(int_model)["layers"]["layer1.0.conv1"]["weight_codes"]
    assert torch.equal(again, codes)
    fake = quantize_as_specified(build_model("resnet20", 10, 3), s.quantization).eval()
    fake.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    _, test_set, _ = load_datasets(s.dataset)
    with torch.no_grad():
        for x, _ in loader(test_set, 128, torch.device("cpu"), shuffle=False):
            assert torch.equal(int_model(x), fake(x))


@pytest.mark.slow
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(fp_run, tmp_path):
    fp_out, _, _ = fp_run
    s = spec(init=str(fp_out / "model.pt"), quant=TERNARY, epochs=3, lr=0.01)
    full = run(s, tmp_path / "full")

    done = []
    with pytest.raises(Cancelled):
        run(s, tmp_path / "cut", on_epoch=done.append, should_cancel=lambda: len(done) == 2)
    assert len(json.loads((tmp_path / "cut/metrics.json").read_text())["epochs"]) == 2
    resumed = run(s, tmp_path / "cut", resume=True)

    assert resumed == full
    a = torch.load(tmp_path / "full/model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_of_another_spec(fp_run, tmp_path):
    run(spec(epochs=1), tmp_path)
    with pytest.raises(ValueError, match="different job spec"):
        run(spec(epochs=1, lr=0.1), tmp_path, resume=True)


@pytest.mark.slow
def test_a_checkpoint_written_before_a_field_existed_still_resumes(tmp_path):
    """An upgrade that adds a spec field (with its default) must not strand running jobs."""
    done = []
    with pytest.raises(Cancelled):
        run(spec(epochs=2), tmp_path, on_epoch=done.append, should_cancel=lambda: bool(done))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del state["spec"]["sensitivity"], state["spec"]["training"]["bn_reestimate"]  # older code
    torch.save(state, tmp_path / "checkpoint.pt")
    assert run(spec(epochs=2), tmp_path, resume=True).epochs == 2
    # Written at spec version 1 (no version saved), without bn_reestimate: that code ran with
    # none, as the job's stored version-1 spec says once upgraded; a default of 100 is another
    # job.
    del state["spec_version"]
    torch.save(state, tmp_path / "checkpoint.pt")
    assert run(spec(epochs=2, bn_reestimate=0), tmp_path, resume=True).epochs == 2
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="different job spec"):
        run(spec(epochs=2), tmp_path, resume=True)
    # `lsq run --resume DIR` reads DIR/spec.yaml as that version wrote it, then writes it whole
    torch.save(state, tmp_path / "checkpoint.pt")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(state["spec"]))
    resumed = _resumed_spec(tmp_path)
    assert resumed.training.bn_reestimate == 0
    assert yaml.safe_load((tmp_path / "spec.yaml").read_text())["training"]["bn_reestimate"] == 0
    assert run(resumed, tmp_path, resume=True).epochs == 2


@pytest.fixture
def sgd_rates(monkeypatch) -> list[list[float]]:
    """Every SGD step's group lrs, written down before the real step runs."""
    rates = []
    sgd_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        rates.append([g["lr"] for g in self.param_groups])
        return sgd_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    return rates


def test_cosine_batch_anneals_after_every_batch_and_the_steps_at_their_own_rate(
    fp_run, tmp_path, sgd_rates
):
    init = str(fp_run[0] / "model.pt")
    job = spec(epochs=2, init=init, quant=TERNARY, scheduler="cosine_batch", step_lr_scale=10)
    seen = []
    run(job, tmp_path, on_epoch=seen.append)
    batches = 512 // 64  # per epoch
    expected = [
        0.01 * 0.5 * (1 + math.cos(math.pi * (e + i / batches) / 2))
        for e in range(2)
        for i in range(batches)
    ]  # 0.01 at the first batch, 0.01 * (1 + cos(15 pi / 16)) / 2 = 0.0001 at the last
    assert [w for w, _ in sgd_rates] == pytest.approx(expected)
    assert [s for _, s in sgd_rates] == pytest.approx([10 * r for r in expected])
    assert [e.lr for e in seen] == pytest.approx([0.01, 0.005])  # at each epoch's start


@pytest.mark.slow
def test_warm_up_rises_linearly_then_the_epochs_cosine_goes_on_as_without_it(
    fp_run, tmp_path, sgd_rates
):
    init = str(fp_run[0] / "model.pt")
    seen = []
    run(spec(epochs=2, init=init, quant=TERNARY, warmup_epochs=1.5), tmp_path, on_epoch=seen.append)
    batches = 512 // 64
    cosine = [0.01, 0.005]  # per epoch: the second epoch's lr steps from the first's own 0.01
    expected = [
        cosine[e] * min(1.0, (e * batches + i + 1) / 12)  # 12 warm-up steps: 1.5 epochs
        for e in range(2)
        for i in range(batches)
    ]  # 0.01/12, 0.02/12, ..., 0.01 * 8/12; then 0.005 * 9/12, ..., 0.005 from step 12
    assert [w for w, _ in sgd_rates] == pytest.approx(expected)
    assert [s for _, s in sgd_rates] == pytest.approx(expected)
    assert [e.lr for e in seen] == pytest.approx(cosine)


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains(fp_run, tmp_path):
    fp_out, _, _ = fp_run
    s = spec(init=str(fp_out / "model.pt"), quant=TERNARY, epochs=1, lr=0.01, precision="bf16")
    assert run(s, tmp_path).final_top1 > 40


def test_a_lazy_load_reads_the_small_fields_of_any_checkpoint(tmp_path):
    """Mapped where torch can map the file; read whole where it cannot (the format before
    torch's zip one), and refused alike when it is no checkpoint at all."""
    state = {"spec_version": 2, "weight": torch.ones(3)}
    torch.save(state, tmp_path / "new.pt")
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    for name in ("new.pt", "old.pt"):
        assert checkpoint.load(tmp_path / name, lazy=True)["spec_version"] == 2
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a readable PyTorch checkpoint"):
        checkpoint.load(tmp_path / "junk.pt", lazy=True)


def test_bad_init_files_give_readable_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        run(spec(init=str(tmp_path / "nope.pt")), tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a readable PyTorch checkpoint"):
        run(spec(init=str(tmp_path / "junk.pt")), tmp_path)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit this network"):
        run(spec(init=str(tmp_path / "other.pt")), tmp_path)
    with pytest.raises(ValueError, match="give the path of that job's model.pt"):
        spec(init={"job": 7})
