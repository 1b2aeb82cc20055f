"""What a forward pass shows of a network: which Conv2d and Linear modules run, in what order.

Module order says nothing reliable about data flow: a network may register its classifier
first, or call a layer's weight directly (nn.MultiheadAttention's out_proj, torchvision Swin's
qkv and proj), so swapping that module for a quantized twin would change nothing. One traced
forward of an example batch answers both questions for any network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# The module types conversion swaps, by exact type: a subclass may be called differently.
QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Trace:
    order: list[str]  # quantizable modules in the order they first ran
    unused: dict[str, str]  # float layers the conversion leaves alone, and why

    @property
    def first(self) -> str | None:
        return self.order[0] if self.order else None

    @property
    def last(self) -> str | None:
        return self.order[-1] if self.order else None


@torch.no_grad()
def watched_forward(model: nn.Module, x: torch.Tensor, hooks: list[RemovableHandle]) -> None:
    """One forward of `x` in eval mode, without gradients; the hooks are removed and the
    model's mode restored afterwards, whatever happens."""
    training = model.training
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(training)


def trace(model: nn.Module, example: torch.Tensor) -> Trace:
    """Run `example` through `model` in eval mode (its mode and buffers are kept) and record
    which quantizable modules ran, in order."""
    names = {m: n for n, m in model.named_modules() if type(m) in QUANTIZABLE}
    ran: dict[str, None] = {}  # ordered, each name once (a module may run more than once)

    def record(module: nn.Module, _: object) -> None:
        ran.setdefault(names[module])

    watched_forward(model, example, [m.register_forward_pre_hook(record) for m in names])
    return Trace(list(ran), _left_float(model, set(ran)))


def _left_float(model: nn.Module, ran: set[str]) -> dict[str, str]:
    unused = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            unused[name] = "nn.MultiheadAttention computes with its weights, not its modules"
        elif _inside(name, unused):
            continue
        elif type(m) in QUANTIZABLE and name not in ran:
            unused[name] = "never called as a module in a forward: its weight is used directly"
        elif isinstance(m, QUANTIZABLE) and type(m) not in QUANTIZABLE:
            unused[name] = f"{type(m).__name__}, a subclass whose forward may differ"
    return unused


def _inside(name: str, parents: dict[str, str]) -> bool:
    return any(name.startswith(p + ".") for p in parents)
