"""Networks by name: our CIFAR-style ResNets (He et al. 2016, option A shortcuts) and small ViT,
and any network of lsq.zoo (torchvision, timm, a deployment's entry points)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from . import zoo
from .archs import TIMM, plugins, unknown

if TYPE_CHECKING:
    from .spec import ModelSpec


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Option A: a parameter-free shortcut (subsample and zero-pad channels), as in the paper.
        self.pad = planes - in_planes if stride != 1 or in_planes != planes else 0
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pad:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: 16/32/64 channels, global average pool, one linear."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        # Created and registered in execution order: the same RNG draws as ever for a seed.
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)
        self.register_load_state_dict_pre_hook(_rename_old_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _rename_old_blocks(module: CifarResNet, state_dict: dict, prefix: str, *_: Any) -> None:
    """Loading a state dict saved before the blocks were split in stages (one `layers`
    Sequential: `layers.4.conv1`) renames its keys to torchvision's names (`layer2.1.conv1`
    for ResNet-20), so old model.pt and checkpoint.pt files still load and resume."""
    old, n = f"{prefix}layers.", len(module.layer1)
    for key in [k for k in state_dict if k.startswith(old)]:
        index, _, rest = key[len(old) :].partition(".")
        if index.isdecimal():
            i = int(index)
            state_dict[f"{prefix}layer{i // n + 1}.{i % n}.{rest}"] = state_dict.pop(key)


def _cifar(depth: int) -> Builder:
    def build(num_classes: int, in_channels: int, image_size: int, pretrained: bool) -> nn.Module:
        if pretrained:
            raise ValueError(f"resnet{depth} has no pretrained weights; give a checkpoint path")
        return CifarResNet(depth, num_classes, in_channels)

    return build


def vit_tiny(num_classes: int, in_channels: int, image_size: int, pretrained: bool) -> nn.Module:
    """A small ViT for small images (torchvision's VisionTransformer: 6 layers of width 192,
    3 heads, 4x4 patches), with the patch embedding taking `in_channels`."""
    if pretrained:
        raise ValueError("vit_tiny has no pretrained weights; give a checkpoint path")
    if image_size % 4:
        raise ValueError(f"vit_tiny cuts images into 4x4 patches: {image_size} is no multiple of 4")
    model = torchvision.models.VisionTransformer(
        image_size, 4, 6, 3, 192, 384, num_classes=num_classes
    )
    return zoo.adapt(model, num_classes, in_channels, image_size, keep_weights=False)


Builder = Callable[[int, int, int, bool], nn.Module]
OWN: dict[str, Builder] = {
    **{f"resnet{d}": _cifar(d) for d in (20, 32, 44, 56)},
    "vit_tiny": vit_tiny,
}


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = False,
    image_size: int = 32,
) -> nn.Module:
    """A network for `num_classes` classes of `in_channels`-channel images of `image_size`
    pixels square: ours (OWN), torchvision's by builder name, `timm:<name>`, or one a
    deployment registers as an `lsq.networks` entry point."""
    if arch in OWN:
        build: Builder = OWN[arch]
    elif arch.startswith(TIMM):
        build = functools.partial(zoo.timm_model, arch.removeprefix(TIMM))
    elif arch in plugins():
        build = functools.partial(zoo.plugin_model, arch)
    elif arch in zoo.torchvision_archs():
        build = functools.partial(zoo.torchvision_model, arch)
    else:
        raise ValueError(unknown(arch) or f"{arch} is no network")
    return build(num_classes, in_channels, image_size, pretrained)


def build_network(
    model: ModelSpec, num_classes: int, in_channels: int, image_size: int, pretrained: bool
) -> nn.Module:
    """The network a spec's `model` names: built by name, or converted from its ONNX file."""
    if model.onnx is not None:
        from .onnx_import import load_onnx  # onnx2torch loads only for an ONNX model

        return load_onnx(model.onnx, num_classes, in_channels, image_size)
    return build_model(model.arch, num_classes, in_channels, pretrained, image_size)
