"""`lsq layers ARCH`: a network's quantizable layers in the order they run, each with what its
input holds (a random batch of normalised images measures it, as training's first batch will),
and the layers that stay float, with the reason. `lsq layers --list` names every network."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .archs import OWN_NAMES, plugins, table
from .cost import DATASETS

if TYPE_CHECKING:  # torch is imported when a network is built: `lsq --help` stays quick
    import torch
    from torch import nn


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "layers", help="list a network's quantizable layers (names for quantization.layers)"
    )
    p.add_argument("arch", nargs="?", help="resnet20, mobilenet_v2, vit_tiny, timm:<name>, ...")
    p.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS), help="its shape")
    p.add_argument("--list", action="store_true", help="name every network there is")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if args.list or not args.arch:
        print("ours:", ", ".join(OWN_NAMES))
        print("torchvision:", ", ".join(a for a in table() if a not in OWN_NAMES))
        print("this deployment's (lsq.networks):", ", ".join(plugins()) or "none")
        print("timm (with the timm extra): timm:<name>, as timm.list_models() names them")
        return 0
    import torch

    from .networks import build_model

    g = DATASETS[args.dataset]
    try:
        model = build_model(args.arch, g.classes, g.channels, image_size=g.size)
    except ValueError as e:
        sys.exit(f"lsq layers: {e}")
    rows, unused = measure(model, torch.randn(2, g.channels, g.size, g.size))
    shape = f"{g.channels} channel(s) of {g.size} px, {g.classes} classes"
    print(f"{args.arch} for {args.dataset} ({shape}):")
    print(f"{'layer':<40} {'type':<7} {'weight shape':<18} {'parameters':>10}  input")
    for i, (name, layer, signed) in enumerate(rows):
        mark = " (first)" if i == 0 else " (last)" if i == len(rows) - 1 else ""
        shape, count = tuple(layer.weight.shape), sum(p.numel() for p in layer.parameters())
        sign = "signed" if signed else "non-negative"
        print(f"{name:<40} {type(layer).__name__:<7} {str(shape):<18} {count:>10,}  {sign}{mark}")
    for name, why in unused.items():
        print(f"stays float: {name}: {why}")
    return 0


def measure(
    model: nn.Module, images: torch.Tensor
) -> tuple[list[tuple[str, nn.Module, bool]], dict[str, str]]:
    """Each layer that runs (lsq.graph), in order, and whether its input held a negative value;
    the layers that stay float and why."""
    from .graph import trace, watched_forward

    found = trace(model, images)
    negative: dict[nn.Module, bool] = {}

    def record(layer: nn.Module, x: tuple[torch.Tensor, ...]) -> None:
        negative.setdefault(layer, bool((x[0] < 0).any()))

    hooks = [model.get_submodule(n).register_forward_pre_hook(record) for n in found.order]
    watched_forward(model, images, hooks)
    layers = [(n, model.get_submodule(n)) for n in found.order]
    rows = [(n, layer, negative[layer]) for n, layer in layers]
    return rows, found.unused
