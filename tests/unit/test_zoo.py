"""Networks we did not write: each of these torchvision classifiers (and our small ViT) is
adapted to the data, quantized, trained a step and exported to ONNX with the same predictions
in onnxruntime; a layer whose input can be negative gets a signed level set, measured."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsq import export, health
from lsq.convert import quantize_model
from lsq.layers import QuantConv2d, QuantLinear
from lsq.loop import init_steps
from lsq.networks import build_model
from lsq.onnx_export import export_onnx
from lsq.quantizer import LsqQuantizer
from lsq.spec import JobSpec
from lsq.train import run

# (network, image size): small images keep each case to a second or two on two cores
ZOO = [
    ("mobilenet_v2", 32),
    ("mobilenet_v3_small", 32),
    ("efficientnet_b0", 32),
    ("shufflenet_v2_x0_5", 32),
    ("regnet_x_400mf", 32),
    ("convnext_tiny", 32),
    ("vit_tiny", 16),
]
TERNARY_2BIT = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3], "first_last": "same"}
FOUR_BIT = {"weight": {"bits": 4, "signed": True}, "activation": {"bits": 4}}


pytestmark = pytest.mark.usefixtures("one_thread")


def quantized_layers(model: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}


@pytest.mark.parametrize("levels", [TERNARY_2BIT, FOUR_BIT], ids=["W3A2", "W4A4"])
@pytest.mark.parametrize(("arch", "size"), ZOO, ids=[a for a, _ in ZOO])
def test_a_network_quantizes_trains_a_step_and_exports_to_onnx(
    arch: str, size: int, levels: dict, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 10, 1, image_size=size)  # grey images, ten classes
    if arch == "vit_tiny":  # torchvision's ViT head starts at zero: every image, the same logits
        nn.init.normal_(model.heads.head.weight, std=0.5)
    x, y = torch.randn(8, 1, size, size), torch.arange(8) % 10
    model = quantize_model(model, **levels, example=x[:1])
    layers = quantized_layers(model)
    assert len(layers) > 5
    init_steps(model.train(), x)
    assert all(not q.needs_init for q in model.modules() if isinstance(q, LsqQuantizer))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)  # random nets: steep
    for _ in range(2):  # a zero-initialised head (ViT's) passes gradients on from the second
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert all(m.weight_quantizer.step.grad is not None for m in layers.values())
    assert any(m.weight_quantizer.step.grad.abs().sum() > 0 for m in layers.values())

    model.eval()
    export_onnx(model, 1, size, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    images = torch.randn(16, 1, size, size)
    with torch.no_grad():
        want = model(images).numpy()
    assert np.isfinite(want).all()
    got = session.run(["logits"], {"images": images.numpy()})[0]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 15 / 16  # a rare level-boundary tie
    assert np.isclose(got, want, rtol=1e-3, atol=1e-3).all(axis=1).mean() >= 0.75


def input_levels(model: nn.Module) -> dict[str, list[int]]:
    return {n: m.input_quantizer.levels.levels for n, m in quantized_layers(model).items()}


def test_a_signed_input_gets_a_signed_set_and_a_relu_fed_one_keeps_its_own() -> None:
    """MobileNetV2's expand convolutions read a linear bottleneck (plus a residual): signed.
    Its depthwise convolutions read a ReLU6: non-negative. Measured on the first batch."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    network = build_model("mobilenet_v2", 10, 3, image_size=32)
    model = quantize_model(network, [-1, 0, 1], [0, 1, 2, 3], "same", example=x[:1])
    before = input_levels(model)
    assert before["features.2.conv.0.0"] == [0, 1, 2, 3]  # as converted: nothing measured yet
    init_steps(model.train(), x)
    levels = input_levels(model)
    expand = [n for n in levels if n.endswith("conv.0.0") and n != "features.1.conv.0.0"]
    assert len(expand) == 16 and all(levels[n] == [-2, -1, 0, 1] for n in expand)
    depthwise = [n for n in levels if n.endswith("conv.1.0")]
    assert len(depthwise) == 16 and all(levels[n] == [0, 1, 2, 3] for n in depthwise)
    assert levels["features.0.0"] == [-2, -1, 0, 1]  # the image
    assert levels["classifier.1"] == [0, 1, 2, 3]  # after ReLU6 and the average pool
    signed = quantized_layers(model)["features.2.conv.0.0"].input_quantizer
    assert "input measured signed" in repr(signed)
    seen = {(h.layer, h.kind): h for h in health.measure(model, x)}  # the epoch's record
    expand, depthwise = (
        seen["features.2.conv.0.0", "activation"],
        seen["features.2.conv.1.0", "activation"],
    )
    assert expand.signed and expand.levels == [-2, -1, 0, 1]
    assert not depthwise.signed and depthwise.levels == [0, 1, 2, 3]


def test_depthwise_convolutions_get_a_step_per_channel_even_per_tensor() -> None:
    """One step for all of a layer's 3 x 3 depthwise filters sends most of them to zeros."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    network = build_model("mobilenet_v2", 10, 3, image_size=32)
    model = quantize_model(network, [-1, 0, 1], [0, 1, 2, 3], example=x[:1])  # per tensor
    assert quantized_layers(model)["features.2.conv.0.0"].weight_quantizer.step.shape == (1,)
    depthwise = quantized_layers(model)["features.2.conv.1.0"]
    assert depthwise.groups == depthwise.in_channels == 96
    q = depthwise.weight_quantizer
    assert q.step.shape == (96,)
    expected = 2 * depthwise.weight.detach().abs().mean((1, 2, 3)) / 1.0  # sqrt(Q_P) = 1
    torch.testing.assert_close(q.step.detach(), expected)
    init_steps(model.train(), x)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    assert q.step.grad.shape == (96,) and (q.step.grad != 0).sum() > 48


def test_a_measured_sign_is_kept_by_a_checkpoint_and_old_checkpoints_load() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)

    def fresh() -> nn.Module:
        net = build_model("mobilenet_v2", 10, 3, image_size=32)
        return quantize_model(net, [-1, 0, 1], [0, 1, 2, 3], example=x[:1])

    trained = fresh()
    init_steps(trained.train(), x)
    state = trained.state_dict()
    resumed = fresh()
    resumed.load_state_dict(state)
    assert input_levels(resumed) == input_levels(trained)
    assert resumed.features[2].conv[0][0].input_quantizer.levels.levels == [-2, -1, 0, 1]
    # from before signs were measured: no `signed` buffer, the sets as converted, loaded strictly
    old = {k: v for k, v in state.items() if not k.endswith("input_quantizer.signed")}
    legacy = fresh()
    legacy.load_state_dict(old)
    assert legacy.features[2].conv[0][0].input_quantizer.levels.levels == [0, 1, 2, 3]


def test_the_first_and_last_layers_are_found_by_execution_not_by_module_order() -> None:
    class HeadFirst(nn.Module):  # registers its classifier before its stem
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 10)
            self.stem = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.adaptive_avg_pool2d(torch.relu(self.stem(x)), 1).flatten(1))

    model = quantize_model(HeadFirst(), [-1, 0, 1], [0, 1, 2, 3], example=torch.zeros(1, 3, 8, 8))
    assert isinstance(model.head, nn.Linear) and isinstance(model.stem, nn.Conv2d)  # both float


def test_pretrained_weights_missing_from_the_cache_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ValueError) as e:
        build_model("mobilenet_v2", 10, 3, pretrained=True)
    path = tmp_path / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth"
    assert "put mobilenet_v2-7ebf99e0.pth (from https://" in str(e.value)
    assert str(path) in str(e.value)
    assert not path.exists()  # nothing was downloaded


def test_a_network_too_small_for_the_images_is_a_readable_error() -> None:
    with pytest.raises(ValueError, match="cannot run on 28x28 images"):
        build_model("alexnet", 10, 1, image_size=28)


def test_a_timm_network_is_built_for_the_data_quantized_and_trained() -> None:
    pytest.importorskip("timm")  # the timm extra, which the dev install includes
    torch.manual_seed(0)
    x = torch.randn(4, 1, 32, 32)
    model = build_model("timm:resnet18", 7, 1, image_size=32)
    model = quantize_model(model, [-1, 0, 1], [0, 1, 2, 3], example=x[:1])
    layers = quantized_layers(model)
    assert "conv1" not in layers and "fc" not in layers  # first and last: float by default
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    init_steps(model.train(), x)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    assert all(m.weight_quantizer.step.grad is not None for m in layers.values())
    with pytest.raises(ValueError, match="timm has no network 'nonet'"):
        build_model("timm:nonet", 10, 3)


def test_timm_pretrained_weights_come_from_its_cache_only(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent/hub")
    tried = []

    def connect(sock: socket.socket, address: object) -> None:
        tried.append(address)
        raise OSError("no network here")

    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(ValueError, match="pretrained weights are not in the Hugging Face cache"):
        build_model("timm:resnet18", 10, 3, pretrained=True)
    assert tried == []  # offline: not even an attempt


def test_a_network_built_for_other_images_says_so() -> None:
    with pytest.raises(ValueError, match="vit_b_16 cannot be built for 28 px images"):
        build_model("vit_b_16", 10, 1, image_size=28)  # 16 x 16 patches do not tile 28 px


def test_lsq_plus_offsets_train_on_a_network_with_signed_inputs(tmp_path: Path) -> None:
    """activation_offset: GELU- and LayerNorm-fed layers keep [0, 1, 2, 3] and learn where it
    starts. No ONNX graph: onnxruntime's optimisations change such a graph's predictions."""
    torch.manual_seed(0)
    x = torch.randn(8, 1, 16, 16)
    network = build_model("vit_tiny", 10, 1, image_size=16)
    model = quantize_model(network, [-1, 0, 1], [0, 1, 2, 3], example=x[:1], activation_offset=True)
    init_steps(model.train(), x)
    mlp = quantized_layers(model)["encoder.layers.encoder_layer_0.mlp.3"].input_quantizer
    assert mlp.levels.levels == [0, 1, 2, 3] and not mlp.signed and mlp.offset.item() < 0
    F.cross_entropy(model(x), torch.arange(8)).backward()
    assert mlp.offset.grad is not None
    reported = {h.layer: h for h in health.measure(model, x) if h.kind == "activation"}
    assert reported["encoder.layers.encoder_layer_0.mlp.3"].offset == mlp.offset.item()
    with pytest.raises(ValueError, match="LSQ\\+ offsets"):
        export_onnx(model.eval(), 1, 16, tmp_path / "model.onnx")


def test_sensitivity_distillation_and_the_integer_export_on_a_torchvision_network(
    tmp_path: Path,
) -> None:
    """From one MobileNetV3 model.pt: a sensitivity job probes its layers by their real names,
    a distilled job learns from it, and the integer export holds each layer's codes."""
    data = {"name": "synthetic", "train_size": 256, "test_size": 128}

    def job(name: str, **more: object) -> JobSpec:
        base = {"name": name, "dataset": data, "model": {"arch": "mobilenet_v3_small"}}
        return JobSpec.model_validate(base | {"training": {"epochs": 1, "batch_size": 64}} | more)

    run(job("fp"), tmp_path / "fp")
    init = {"arch": "mobilenet_v3_small", "init": str(tmp_path / "fp" / "model.pt")}
    q = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]}
    probed = run(job("probe", model=init, quantization=q,
                     sensitivity={"layers": ["features.1.*"]}), tmp_path / "probe")  # fmt: skip
    layers = [p.layer for p in probed.sensitivity if p.layer != "all"]
    assert layers == ["features.1.block.0.0", "features.1.block.1.fc1", "features.1.block.1.fc2",
                      "features.1.block.2.0"]  # fmt: skip
    distilled = job("distil", model=init, quantization=q,
                    training={"epochs": 1, "batch_size": 64, "lr": 0.001,
                              "distill": {"teacher": init["init"]}})  # fmt: skip
    run(distilled, tmp_path / "distil")
    epochs = json.loads((tmp_path / "distil" / "metrics.json").read_text())["epochs"]
    assert epochs[0]["teacher_seconds"] > 0  # the teacher ran
    codes = export.read_integer(tmp_path / "distil" / "model-int.pt")["layers"]
    assert codes["features.1.block.0.0"]["weight_levels"] == [-1, 1]
    assert "features.0.0" not in codes and "classifier.3" not in codes  # first/last: float
