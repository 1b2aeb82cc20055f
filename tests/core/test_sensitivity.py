"""Per-layer sensitivity (the `sensitivity` job), the levels a fine-tuned probe gets, and the
two controlled accuracy changes: the MSE activation init and batch-norm re-estimation."""

import math
import subprocess
import sys

import pytest
import torch
from jobs import synthetic_spec as spec
from pydantic import ValidationError
from torch import nn

from lsq.archs import layer_names
from lsq.convert import quantize_as_specified, quantize_model
from lsq.data import load_datasets
from lsq.evaluation import evaluate
from lsq.levels import parse_levels
from lsq.loop import loader, reestimate_batch_norm
from lsq.networks import build_model
from lsq.quantizer import initial_step, mse_step
from lsq.spec import JobSpec, QuantizationSpec, SensitivitySpec
from lsq.train import run

W_ONLY = {"weight": [-1, 0, 1], "first_last": "same"}
PROBED = ["conv1", "layer1.0.*", "fc"]


def _float_model(path: str) -> nn.Module:
    model = build_model("resnet20", 10, 3)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


@pytest.mark.parametrize("mode", ["quantize_one", "float_one"])
def test_each_probe_is_the_network_with_that_layer_alone_quantized_or_float(
    tmp_path, fp_model, mode
) -> None:
    """Weights only, so no step depends on data: each probe must equal an independent
    conversion with the per-layer levels a fine-tuned probe job would get (at 0 epochs)."""
    probe = {"mode": mode, "layers": PROBED}
    s = spec("probe", init=fp_model, quant=W_ONLY, sensitivity=probe)
    result = run(s, tmp_path)
    assert result.epochs == 0 and (tmp_path / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.layer for p in result.sensitivity] == [
        "conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"
    ]  # fmt: skip
    assert result.init_top1 > 30  # the float start learned the synthetic classes
    _, test_set, _ = load_datasets(s.dataset, 0)
    test = loader(test_set, 256, torch.device("cpu"), shuffle=False)
    cpu = torch.device("cpu")
    whole = quantize_model(_float_model(fp_model), [-1, 0, 1], first_last="same")
    assert result.final_top1 == evaluate(whole, test, cpu).top1
    for p in result.sensitivity:
        levels = s.sensitivity.levels_for("resnet20", s.quantization, p.layer)
        model = quantize_model(_float_model(fp_model), layers=levels, first_last="float")
        expected = evaluate(model, test, cpu)
        assert (p.test_top1, p.test_top5) == (expected.top1, expected.top5), p.layer
        assert p.drop_top1 == pytest.approx(result.init_top1 - p.test_top1)
        assert (p.weight, p.activation) == ("[-1,0,1]", None)
    params = {p.layer: p.parameters for p in result.sensitivity}
    assert params["conv1"] == 3 * 16 * 9 and params["fc"] == 64 * 10 + 10


def test_the_levels_a_fine_tuned_probe_gets() -> None:
    q = JobSpec.model_validate(
        {"name": "x", "dataset": {"name": "cifar10"}, "model": {"arch": "resnet20"},
         "quantization": {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]}}
    ).quantization  # fmt: skip
    both, none = (
        {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]},
        {"weight": None, "activation": None},
    )
    one = SensitivitySpec(mode="quantize_one").levels_for("resnet20", q, "layer2.0.conv2")
    assert one["layer2.0.conv2"] == both
    assert all(v == none for k, v in one.items() if k != "layer2.0.conv2") and len(one) == 20
    off = SensitivitySpec(mode="float_one").levels_for("resnet20", q, "layer2.0.conv2")
    assert off["layer2.0.conv2"] == none and off["layer1.0.conv1"] == both
    assert off["conv1"] == off["fc"] == none  # first_last float: never quantized here
    assert SensitivitySpec().probed("resnet20", q) == layer_names("resnet20")[1:-1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"init": None}, "give model.init"),
        ({"quant": {}}, "give quantization"),
        ({"sensitivity": {"layers": ["conv1"]}}, "'conv1' matches no layer this spec quantizes"),
        ({"sensitivity": {"mode": "both"}}, "quantize_one"),
        ({"sensitivity": {"layers": []}}, "at least 1"),
        ({"devices": 2}, "one device"),
    ],
)
def test_a_bad_sensitivity_spec_says_why(change, message) -> None:
    args = {"init": "fp.pt", "quant": {"weight": [-1, 0, 1]}, "sensitivity": {}} | change
    with pytest.raises(ValidationError, match=message):
        spec("probe", **args)


@pytest.mark.slow
def test_lsq_run_prints_the_probes(tmp_path, fp_model) -> None:
    path = tmp_path / "probe.yaml"
    s = spec("probe", init=fp_model, quant=W_ONLY, sensitivity={"layers": ["fc", "conv1"]})
    path.write_text(s.to_yaml())
    done = subprocess.run(
        [sys.executable, "-m", "lsq", "run", str(path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("layer") and "only this layer quantized" in lines[1]
    assert lines[2].startswith("conv1 ") and lines[3].startswith("fc ")
    assert "with every layer quantized, untrained" in lines[4]


def test_the_mse_step_by_hand() -> None:
    # 100 values at 1 and one at 9, levels [0, 1]: candidates are 9k/100. Steps up to 2 keep
    # the ones at 1 (error 100 (1-s)^2 + (9-s)^2, least at s = 218/202 = 1.079: the nearest
    # candidate is 1.08, error 63.37); larger steps round the ones to 0 (error >= 100).
    v = torch.tensor([1.0] * 100 + [9.0])
    levels = parse_levels([0, 1])
    assert mse_step(v, levels).item() == pytest.approx(1.08)
    assert initial_step(v, levels).item() == pytest.approx(2 * 109 / 101)  # the paper's rule
    # 4 ones and a 9: keeping the ones costs at least 53, the step 9 only 4 (they round to 0)
    assert mse_step(torch.tensor([1.0, 1, 1, 1, 9]), levels).item() == pytest.approx(9.0)


@pytest.mark.slow
def test_an_mse_init_job_starts_its_activation_steps_by_the_mse_rule(tmp_path, fp_model) -> None:
    quant = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3], "activation_init": "mse"}
    s = spec("mse", epochs=1, init=fp_model, quant=quant)
    assert JobSpec.model_validate_json(s.model_dump_json()) == s
    model = quantize_model(_float_model(fp_model), [-1, 0, 1], [0, 1, 2, 3], activation_init="mse")
    quantizer = model.layer1[0].conv1.input_quantizer
    assert quantizer.init == "mse" and model.layer1[0].conv1.weight_quantizer.init == "lsq"
    x = torch.rand(8, 16, 4, 4)
    quantizer.train()(x)
    assert quantizer.step.item() == pytest.approx(mse_step(x, quantizer.levels).item())
    assert run(s, tmp_path).final_top1 > 20


def test_a_weight_mse_init_starts_each_weight_step_by_the_mse_rule(fp_model) -> None:
    q = QuantizationSpec(weight=[-1, 0, 1], activation=[0, 1, 2, 3], weight_init="mse")
    model = quantize_as_specified(_float_model(fp_model), q)
    conv = model.layer1[0].conv1
    assert conv.weight_quantizer.init == "mse" and conv.input_quantizer.init == "lsq"
    ternary = conv.weight_quantizer.levels
    assert conv.weight_quantizer.step.item() == mse_step(conv.weight, ternary).item()
    # at 3 levels the error-optimal step is below the paper's 2 mean|w|: fewer weights at 0
    assert conv.weight_quantizer.step.item() < initial_step(conv.weight, ternary).item()
    per_channel = q.model_copy(update={"granularity": "per_channel"})
    conv = quantize_as_specified(_float_model(fp_model), per_channel).layer1[0].conv1
    each = [mse_step(w, ternary) for w in conv.weight]  # each output channel's own search
    assert conv.weight_quantizer.step.tolist() == pytest.approx(torch.stack(each).tolist())


def test_batch_norm_is_reestimated_as_the_plain_average_of_the_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    batches = [(torch.randn(4, 1, 3, 3) * 3 + 1, None) for _ in range(3)]
    reestimate_batch_norm(model, batches, 2, torch.device("cpu"), None)  # the first two only
    with torch.no_grad():
        outs = [model[0](x) for x, _ in batches[:2]]
    bn = model[1]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs])
    variances = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert bn.momentum == 0.1 and bn.num_batches_tracked.item() == 2
    assert not math.isnan(bn.running_var.sum().item())


@pytest.mark.slow
def test_a_job_reestimates_batch_norm_after_each_epoch(tmp_path, fp_model) -> None:
    quant = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]}
    result = run(spec("bn", epochs=1, init=fp_model, quant=quant, bn_reestimate=2), tmp_path)
    assert result.final_top1 > 20
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["bn1.num_batches_tracked"].item() == 2  # reset, then 2 batches
