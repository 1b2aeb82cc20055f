"""The ONNX export runs in onnxruntime with the fake-quantized model's predictions; the integer
export's compliance check and size."""

import math
from collections import Counter

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from jobs import TERNARY_ALL
from jobs import synthetic_spec as spec

from lsq import cli, export, onnx_export
from lsq.convert import quantize_model
from lsq.data import load_datasets
from lsq.loop import loader
from lsq.networks import build_model
from lsq.train import run


@pytest.fixture(scope="module", params=["per_tensor", "per_channel"])
def quantized_run(request, tmp_path_factory, fp_model):
    """A ternary/2-bit ResNet-20 (first and last layer quantized too), one epoch from float."""
    out = tmp_path_factory.mktemp(f"q-{request.param}")
    quant = {**TERNARY_ALL, "granularity": request.param}
    s = spec(init=fp_model, quant=quant, epochs=1)
    return out, s, run(s, out)


def test_onnx_graph_runs_in_onnxruntime_with_identical_predictions(quantized_run) -> None:
    out, s, _ = quantized_run
    graph = onnx.load(out / "model.onnx")
    onnx.checker.check_model(graph)
    ops = Counter(node.op_type for node in graph.graph.node)
    # 20 quantized layers (19 convs and the linear), each with a quantized weight and input
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 40
    assert ops["Conv"] == 19 and ops["Gemm"] == 1

    fake, _ = export.load_trained(out / "model-int.pt", out / "model.pt")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    _, test_set, _ = load_datasets(s.dataset)
    agree = close = total = 0
    with torch.inference_mode():
        for x, _ in loader(test_set, 100, torch.device("cpu"), shuffle=False):  # batch is free
            want = fake(x).numpy()
            got = session.run(["logits"], {"images": x.numpy()})[0]
            agree += int((got.argmax(1) == want.argmax(1)).sum())
            close += int(np.isclose(got, want, rtol=1e-4, atol=1e-4).all(axis=1).sum())
            total += len(x)
    assert agree == total == 256  # every prediction the same
    # and the logits too, but for the rare image where the runtimes' convolutions round an
    # activation on the other side of a level boundary (one step, carried on)
    assert close >= 0.95 * total


def test_the_graph_enforces_the_level_sets(quantized_run) -> None:
    """Every QuantizeLinear is preceded by the clip to [-Q_N s, Q_P s] (Clip, or Min and Max
    per channel), so a value far outside still dequantizes to a level."""
    out, _, _ = quantized_run
    graph = onnx.load(out / "model.onnx").graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            assert producers[node.input[0]].op_type in ("Clip", "Max"), node.name
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    huge = np.full((1, 3, 16, 16), 1e6, dtype=np.float32)  # clipped at every layer
    assert np.isfinite(session.run(["logits"], {"images": huge})[0]).all()


def test_every_exported_code_lies_in_its_level_set_and_the_size_is_reported(quantized_run):
    out, _, result = quantized_run
    state = export.read_integer(out / "model-int.pt")
    size = export.check(state)
    assert size.violations == []
    assert (result.model_bits, result.compression) == (size.model_bits, size.compression)
    codes = sum(layer["weight_codes"].numel() for layer in state["layers"].values())
    steps = sum(layer["weight_step"].numel() for layer in state["layers"].values())
    steps += sum(1 for k in state["float_state"] if k.endswith("input_quantizer.step"))
    # a ternary code takes 2 bits instead of 32; each step (weights' and inputs') adds 32
    assert codes > 250_000 and size.float_bits - size.model_bits == 30 * codes - 32 * steps
    assert size.compression > 10


@pytest.mark.parametrize(
    ("weight", "activation"), [(None, [0, 1, 2, 3]), ([-1, 0, 1], {"bits": 8})]
)
def test_activation_only_and_unsigned_8_bit_exports_run_as_written(weight, activation, tmp_path):
    """Float weights beside a quantized input: onnxruntime must be told not to quantize them
    itself (its WeightBiasQuantization pass); 8-bit activations (0..255) export as uint8."""
    torch.manual_seed(0)
    model = quantize_model(build_model("resnet20", 10, 3), weight, activation, first_last="same")
    x = torch.randn(64, 3, 16, 16)
    model.train()(x)  # the activation steps' init
    model.eval()
    onnx_export.export_onnx(model, 3, 16, tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(
        str(tmp_path / "m.onnx"), disabled_optimizers=["WeightBiasQuantization"]
    )
    got = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    # an untrained network's classes are near ties: allow the rare image where a level
    # boundary falls the other way in one runtime's convolution (see the trained test)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    if weight is None:  # float weights run as float: the logits agree, not just the classes
        assert np.isclose(got, want, rtol=1e-4, atol=1e-4).all(axis=1).mean() >= 0.9
    if activation == {"bits": 8}:
        graph = onnx.load(tmp_path / "m.onnx").graph
        constants = [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute]
        zero_points = [t for t in constants if t.data_type == onnx.TensorProto.UINT8]
        assert zero_points  # the unsigned sets' zero points: uint8


def test_compliance_by_hand() -> None:
    state = {
        "layers": {
            "conv": {
                "weight_codes": torch.tensor([-1, 0, 1, 2], dtype=torch.int8),
                "weight_step": torch.tensor([0.5]),
                "weight_levels": [-1, 1],
            }
        },
        "float_state": {"bias": torch.zeros(4), "bn.num_batches_tracked": torch.tensor(3)},
    }
    size = export.check(state)
    assert size.violations == ["conv: 1 weight codes outside [-1, 1]"]
    # 4 codes x 2 bits + one 32-bit step + a 4-float bias; the integer counter is not a weight
    assert size.model_bits == 4 * 2 + 32 + 4 * 32
    assert size.float_bits == 4 * 32 + 4 * 32
    assert math.isclose(size.compression, 256 / 168)


def test_lsq_export_checks_a_run_and_writes_onnx(quantized_run, tmp_path, capsys) -> None:
    out, _, _ = quantized_run
    for name in ("model-int.pt", "model.pt"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    assert cli.main(["export", str(tmp_path), "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert "every code in its level set" in printed and "smaller than float32" in printed
    assert (tmp_path / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    with pytest.raises(SystemExit, match="no readable quantized run"):
        cli.main(["export", str(tmp_path / "nowhere")])
