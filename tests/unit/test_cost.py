"""lsq.cost counts a network's multiply-accumulates from shapes alone: the counts must equal
what the real modules do, counted from the tensors that pass through them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lsq import data
from lsq.archs import OWN_NAMES, table
from lsq.cost import (
    DATASETS,
    TRAINING_PASSES,
    job_tmacs,
    network_cost,
    network_macs,
    training_bytes,
)
from lsq.networks import build_model
from lsq.spec import DEFAULT_ROOTS, JobSpec


def counted(arch: str, size: int, channels: int, classes: int) -> tuple[int, int, int]:
    """Every Conv2d's and Linear's multiply-accumulates and output values in one forward pass
    (on the meta device: shapes without arithmetic), and the network's parameters."""
    with torch.device("meta"):
        model = build_model(arch, classes, channels, image_size=size)
    total, outputs = 0, 0

    def count(module: nn.Module, _: tuple, out: torch.Tensor) -> None:
        nonlocal total, outputs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += out.numel() * k * module.in_channels // module.groups
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features
        if isinstance(module, nn.Conv2d | nn.Linear):
            outputs += out.numel()

    for m in model.modules():
        m.register_forward_hook(count)
    model.eval()(torch.empty(1, channels, size, size, device="meta"))
    return total, outputs, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", [a for a in OWN_NAMES if a.startswith("resnet")])
@pytest.mark.parametrize(("size", "channels", "classes"), [(32, 3, 10), (28, 1, 10), (17, 3, 7)])
def test_a_cifar_resnet_costs_what_its_modules_compute(
    arch: str, size: int, channels: int, classes: int
) -> None:
    cost = network_cost(arch, size, channels, classes)
    assert (cost.macs, cost.outputs, cost.parameters) == counted(arch, size, channels, classes)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "efficientnet_b0", "vit_tiny"])
def test_the_table_holds_what_a_network_computes_at_224_px_and_scales_by_area(arch: str) -> None:
    cost = network_cost(arch, 224, 3, 10)
    assert (cost.macs, cost.outputs, cost.parameters) == counted(arch, 224, 3, 10)
    small = network_cost(arch, 112, 3, 10)
    assert (small.macs, small.outputs) == (round(cost.macs / 4), round(cost.outputs / 4))


def test_the_imagenet_resnets_cost_what_their_papers_say() -> None:
    # torchvision's documented GFLOPS (multiply-accumulates, in fact) at 224 x 224
    for arch, gmacs in (("resnet18", 1.81), ("resnet34", 3.66), ("resnet50", 4.09)):
        assert network_macs(arch, 224, 3, 1000) / 1e9 == pytest.approx(gmacs, abs=0.01)
        assert network_macs(arch, 224, 3, 1000) == pytest.approx(
            counted(arch, 224, 3, 1000)[0], rel=1e-3
        )


def test_the_datasets_geometry_is_what_lsq_data_loads() -> None:
    *_, synthetic = data.synthetic(8, 4)
    train, test, fashion = data.fashion_mnist(Path(DEFAULT_ROOTS["fashion-mnist"]))
    for name, info in (("synthetic", synthetic), ("fashion-mnist", fashion)):
        g = DATASETS[name]
        assert (g.channels, g.size, g.classes) == (
            info.in_channels,
            info.image_size,
            info.num_classes,
        )
    assert (len(train), len(test)) == (
        DATASETS["fashion-mnist"].train_images,
        DATASETS["fashion-mnist"].test_images,
    )


def test_a_job_costs_its_epochs_of_training_and_evaluation() -> None:
    spec = JobSpec.model_validate(
        {
            "name": "x",
            "dataset": {"name": "cifar10", "train_size": 1000, "test_size": 200},
            "model": {"arch": "resnet20"},
            "training": {"epochs": 5},
        }
    )
    per_image = network_macs("resnet20", 32, 3, 10)
    expected = 5 * (TRAINING_PASSES * 1000 + 200) * per_image / 1e12
    assert job_tmacs(spec) == pytest.approx(expected)
    # a subset past the dataset's size is the whole dataset
    whole = spec.model_copy(
        update={"dataset": spec.dataset.model_copy(update={"train_size": 10**7})}
    )
    assert job_tmacs(whole) == pytest.approx(5 * (3 * 50_000 + 200) * per_image / 1e12)


def test_a_batch_holds_two_values_per_layer_output_per_image_on_each_device() -> None:
    spec = JobSpec.model_validate(
        {
            "name": "x",
            "dataset": {"name": "synthetic", "image_size": 256},
            "model": {"arch": "resnet50"},
            "training": {"batch_size": 4096, "devices": 4},
        }
    )
    cost = network_cost("resnet50", 256, 3, 10)
    outputs = cost.outputs
    assert training_bytes(spec) == 1024 * outputs * 8 + cost.parameters * 16
    assert 100e6 < outputs * 8 < 130e6  # ResNet-50 at 256 x 256 keeps 113 MB an image


def test_a_cpu_batch_is_held_whole_by_its_host() -> None:
    """`devices` CPU processes share one host: the batch does not shrink per process."""
    spec = JobSpec.model_validate(
        {
            "name": "x",
            "dataset": {"name": "synthetic"},
            "model": {"arch": "resnet20"},
            "training": {"batch_size": 512, "devices": 4},
        }
    )
    cost = network_cost("resnet20", 16, 3, 10)
    whole = 512 * cost.outputs * 8 + 4 * cost.parameters * 16  # 4 processes, a network each
    assert training_bytes(spec) == 512 // 4 * cost.outputs * 8 + cost.parameters * 16
    assert training_bytes(spec, one_host=True) == whole
    on_cpu = spec.model_copy(
        update={"training": spec.training.model_copy(update={"device": "cpu"})}
    )
    assert training_bytes(on_cpu) == whole


def test_a_network_the_table_does_not_know_is_costed_as_its_costliest() -> None:
    """timm's and a deployment's networks: a cheap guess would let a giant past the limits."""
    costliest = max(network_cost(a, 224, 3, 10).macs for a in table())
    assert network_cost("timm:eva_giant_patch14_560", 224, 3, 10).macs == costliest
    assert costliest > 100e9  # RegNetY-128GF's 128 GMACs, not ResNet-50's 4
    giant = network_cost("timm:eva_giant_patch14_560", 28, 1, 10).parameters
    assert giant == max(entry["parameters"] for entry in table().values()) > 600e6
