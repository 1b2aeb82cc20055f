"""lsq.networks: every architecture builds and runs; CIFAR ResNet sizes; pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from lsq.archs import OWN_NAMES, table, unknown
from lsq.graph import trace
from lsq.networks import OWN, CifarResNet, build_model

CIFAR_ARCHS = ["resnet20", "resnet32", "resnet44", "resnet56"]
TORCHVISION_ARCHS = ["resnet18", "resnet34", "resnet50"]
ARCHS = [*OWN_NAMES, *TORCHVISION_ARCHS]


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_torchvision_classifier_is_in_the_table() -> None:
    """network_table.json is as new as the torchvision it runs with."""
    assert set(torchvision.models.list_models(module=torchvision.models)) | {"vit_tiny"} == set(
        table()
    )


def test_the_torch_free_names_of_our_networks_are_the_builders() -> None:
    """lsq.archs lists our networks without importing torch; the list is lsq.networks.OWN."""
    assert list(OWN_NAMES) == list(OWN)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize(
    ("in_channels", "size", "classes"), [(1, 28, 10), (3, 32, 7)], ids=["1x28x28", "3x32x32"]
)
def test_every_arch_builds_and_gives_logits(
    arch: str, in_channels: int, size: int, classes: int
) -> None:
    torch.manual_seed(0)
    model = build_model(arch, classes, in_channels, image_size=size).eval()
    first = model.get_submodule(trace(model, torch.zeros(1, in_channels, size, size)).first)
    assert first.in_channels == in_channels
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, classes) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if arch != "vit_tiny":  # torchvision's ViT starts with a zero head, as in its paper
        assert not torch.allclose(out[0], out[1])  # the two inputs give different logits


def _option_a_count(depth: int, classes: int, in_channels: int = 3) -> int:
    """He et al. (2016) CIFAR ResNet with option A (parameter-free) shortcuts:
    3x3 convs without bias, BN (weight + bias) after each, 16/32/64 channels, one linear."""
    n = (depth - 2) // 6
    count = in_channels * 16 * 9 + 2 * 16  # conv1 + bn1
    in_planes = 16
    for planes in (16, 32, 64):
        for _ in range(n):
            count += 9 * in_planes * planes + 9 * planes * planes + 4 * planes
            in_planes = planes
    return count + 64 * classes + classes


@pytest.mark.parametrize(
    ("arch", "exact", "paper"),
    [
        ("resnet20", 269_722, 0.27),
        ("resnet32", 464_154, 0.46),
        ("resnet44", 658_586, 0.66),
        ("resnet56", 853_018, 0.85),
    ],
)
def test_cifar_resnet_parameter_counts(arch: str, exact: int, paper: float) -> None:
    model = build_model(arch, 10)
    depth = int(arch.removeprefix("resnet"))
    assert n_params(model) == exact == _option_a_count(depth, 10)
    assert round(exact / 1e6, 2) == paper  # table 6 of He et al.
    # option A: no 1x1 projection convs anywhere, only 3x3 convs
    assert {m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)} == {(3, 3)}
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == depth - 1
    assert n_params(build_model(arch, 7, 1)) == _option_a_count(depth, 7, 1)


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    model = CifarResNet(20).eval()
    block = model.layer2[0]  # first block of the 32-channel stage
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert torch.equal(out[:, :8], torch.zeros(2, 8, 4, 4))
    assert torch.equal(out[:, 24:], torch.zeros(2, 8, 4, 4))
    assert model.layer1[1].shortcut(x) is x


def test_cifar_depth_must_be_6n_plus_2() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_cifar_resnets_have_no_pretrained_weights(arch: str) -> None:
    with pytest.raises(ValueError, match=f"{arch} has no pretrained weights"):
        build_model(arch, 10, pretrained=True)


def test_unknown_arch_says_what_there_is() -> None:
    with pytest.raises(ValueError) as e:
        build_model("vgg", 10)
    assert "'vgg' is no network" in str(e.value)
    for where in ("resnet20", "vit_tiny", "torchvision", "timm:<name>", "lsq.networks"):
        assert where in str(e.value)
    for name in ("timm:", "timm:..", "timm:../x", "timm:hf-hub:evil/x", "timm: resnet18"):
        assert unknown(name), name  # only names as timm.list_models() spells them
    assert unknown("timm:resnet18") is None


# ---------------------------------------------------------------- pretrained through torch's cache

CONV1 = (0.5, 0.25, -0.125)  # conv1.weight[:, c] of the cached file, per input colour channel


@pytest.fixture
def cached_resnet18(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """A recognisable resnet18 state dict where torchvision's download would be cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = torchvision.models.resnet18().state_dict()
    for c, v in enumerate(CONV1):
        state["conv1.weight"][:, c] = v
    state["layer4.1.bn2.running_mean"].fill_(3.0)
    state["fc.bias"].copy_(torch.arange(1000, dtype=torch.float32))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / url.rsplit("/", 1)[-1])
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    return state


def test_pretrained_resnet18_comes_from_the_torch_cache(cached_resnet18) -> None:
    model = build_model("resnet18", 1000, 3, pretrained=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, cached_resnet18[key]), key
    assert model.conv1.weight[:, 1].unique().tolist() == [0.25]
    assert float(model.layer4[1].bn2.running_mean[0]) == 3.0


def test_pretrained_resnet18_new_head(cached_resnet18) -> None:
    model = build_model("resnet18", 10, 3, pretrained=True)
    assert model.fc.out_features == 10 and model.fc.in_features == 512
    assert not torch.equal(model.fc.bias, cached_resnet18["fc.bias"][:10])
    assert torch.equal(model.conv1.weight, cached_resnet18["conv1.weight"])
    assert torch.equal(
        model.layer4[1].bn2.running_mean, cached_resnet18["layer4.1.bn2.running_mean"]
    )
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("in_channels", [1, 2])
def test_pretrained_resnet18_fewer_input_channels(cached_resnet18, in_channels: int) -> None:
    """conv1 becomes the colour channels' sum, spread evenly over the new input channels."""
    model = build_model("resnet18", 10, in_channels, pretrained=True)
    assert model.conv1.weight.shape == (64, in_channels, 7, 7)
    expected = sum(CONV1) / in_channels
    assert model.conv1.weight.unique().tolist() == [expected]
    torch.testing.assert_close(
        model.conv1.weight.sum(1), cached_resnet18["conv1.weight"].sum(1), rtol=0, atol=1e-6
    )
    assert torch.equal(model.layer1[0].conv1.weight, cached_resnet18["layer1.0.conv1.weight"])
    assert model.fc.out_features == 10
    with torch.no_grad():
        assert model.eval()(torch.randn(2, in_channels, 28, 28)).shape == (2, 10)


def test_not_pretrained_ignores_the_cache(cached_resnet18) -> None:
    model = build_model("resnet18", 1000, 3, pretrained=False)
    assert not torch.equal(model.conv1.weight, cached_resnet18["conv1.weight"])
    grey = build_model("resnet18", 10, 1, pretrained=False)
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    assert len(grey.conv1.weight.unique()) > 1000
