"""Quantizer health, the reference's tuning advice made visible: per quantized tensor, its
step size and the share of its values at each level (a weight step too large sends almost
every weight to 0; a step that never moves, or explodes, says the learning rate is off).

In lsq, "health" means this and only this: how the quantizers are doing, never whether a process
is up (the service calls those its probes)."""

from __future__ import annotations

import torch
from torch import nn

from .graph import watched_forward
from .metrics import QuantizerHealth
from .quantizer import MIN_STEP, LsqQuantizer

MAX_SHARES = 16  # level shares are kept for level sets this small; larger ones keep zero only


@torch.no_grad()
def measure(model: nn.Module, x: torch.Tensor) -> list[QuantizerHealth]:
    """The health of every quantizer of `model`, from one forward pass of batch `x` in eval
    mode (weights as they are; activations as this batch makes them)."""
    names = {
        m: n.rsplit(".", 1)[0] for n, m in model.named_modules() if isinstance(m, LsqQuantizer)
    }
    found: list[QuantizerHealth] = []

    def hook(q: LsqQuantizer, args: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        found.append(_health(names[q], q, args[0]))

    watched_forward(model, x, [q.register_forward_hook(hook) for q in names])
    return found  # in the order the forward pass met them


def _health(layer: str, q: LsqQuantizer, v: torch.Tensor) -> QuantizerHealth:
    codes = q.codes(v).flatten()
    n = max(1, codes.numel())
    levels = q.levels.levels if q.levels.size <= MAX_SHARES else []
    shares = [(codes == level).sum().item() / n for level in levels]
    zero = shares[levels.index(0)] if levels else (codes == 0).sum().item() / n
    return QuantizerHealth(
        layer=layer,
        kind="activation" if q.activation else "weight",
        step=q.step.detach().clamp_min(MIN_STEP).float().mean().item(),
        zero=zero,
        levels=levels,
        shares=shares,
        signed=q.activation and bool(q.signed),
        offset=None if q.offset is None else q.offset.item(),
    )
