"""Each network's quantizable layers (the Conv2d and Linear modules a forward runs, in that
order) by name, without building it: torch-free, so the API checks `quantization.layers`
patterns in microseconds. Our CIFAR ResNets are computed here; torchvision's networks and our
vit_tiny come from network_table.json (scripts/network_table.py writes it; tests compare both
with the real modules). timm's networks and a deployment's own are known only once built."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

CIFAR_DEPTHS = (20, 32, 44, 56)
OWN_NAMES = (*(f"resnet{d}" for d in CIFAR_DEPTHS), "vit_tiny")  # lsq.networks.OWN
PLUGIN_GROUP = "lsq.networks"
TIMM = "timm:"
ONNX_ARCH = "onnx"  # the network is a user's ONNX file (model.onnx), not one built by name
TIMM_NAME = re.compile(r"timm:[A-Za-z0-9][A-Za-z0-9_.-]{0,194}")  # as timm.list_models() names


@functools.cache
def table() -> dict[str, dict[str, Any]]:
    """network_table.json: per network its layers, pretrained weights and cost at 224 px."""
    return json.loads((Path(__file__).parent / "network_table.json").read_text())


@functools.cache
def plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """The networks installed packages register under `lsq.networks` (not loaded)."""
    return {e.name: e for e in importlib.metadata.entry_points(group=PLUGIN_GROUP)}


def cifar_depth(arch: str) -> int | None:
    """20 for resnet20, ...; None for any other network."""
    depth = arch.removeprefix("resnet")
    return int(depth) if depth.isdigit() and int(depth) in CIFAR_DEPTHS else None


def unknown(arch: str) -> str | None:
    """Why `arch` names no network we can build, or None."""
    if cifar_depth(arch) or arch in table() or arch in plugins() or arch == ONNX_ARCH:
        return None
    if TIMM_NAME.fullmatch(arch):
        return None
    return (
        f"{arch[:80]!r} is no network: give resnet20/32/44/56, vit_tiny, a torchvision "
        "classifier (resnet18, mobilenet_v2, efficientnet_b0, vit_b_16, ...: lsq layers --list), "
        "timm:<name>, onnx (with model.onnx, a file) or a deployment's own (an lsq.networks "
        "entry point)"
    )


def pretrained_missing(arch: str) -> str | None:
    """Why `model.init: pretrained` cannot build `arch`, or None (torchvision's and timm's
    networks can, when their weights are in the cache)."""
    if arch.startswith(TIMM) or table().get(arch, {}).get("pretrained"):
        return None
    if arch == ONNX_ARCH:
        return "an ONNX model brings its own weights: leave model.init out"
    return f"{arch[:80]} has no pretrained weights: give a model.pt"


def layer_names(arch: str) -> list[str] | None:
    """The names of `arch`'s Conv2d and Linear modules in the order a forward runs them (the
    first is its first layer, the last its classifier); None where only a build can tell."""
    if depth := cifar_depth(arch):
        n = (depth - 2) // 6  # blocks per stage, 3 stages
        blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(n)]
        return ["conv1", *[f"{block}.conv{c}" for block in blocks for c in (1, 2)], "fc"]
    entry = table().get(arch)
    return list(entry["layers"]) if entry else None


VIT_PATCH = re.compile(r"vit_[blh]_(\d+)")  # torchvision's ViTs: vit_b_16, vit_l_32, vit_h_14


def patch_side(arch: str) -> int | None:
    """The side of the square patches a ViT of ours or torchvision's cuts its images into."""
    if arch == "vit_tiny":
        return 4
    found = VIT_PATCH.fullmatch(arch)
    return int(found.group(1)) if found else None
