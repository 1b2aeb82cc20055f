"""Turn a float network into a quantized one, driven by configuration, not by model code."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

from .graph import trace
from .layers import QUANTIZED
from .levels import FirstMatch, Init, LevelSet, layer_levels, parse_levels
from .spec import QuantizationSpec

FirstLast = Literal["float", "same"] | LevelSet


def first_and_last(model: nn.Module) -> tuple[str | None, str | None]:
    """Names of the first Conv2d/Linear and of the last Linear, in module registration order
    (for a network no example batch was traced through)."""
    names = [n for n, m in model.named_modules() if type(m) in QUANTIZED]
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    return (names[0] if names else None), (linears[-1] if linears else None)


def quantize_model(
    model: nn.Module,
    weight: Any = None,
    activation: Any = None,
    first_last: Any = "float",
    per_channel: bool = False,
    inplace: bool = False,
    layers: dict[str, dict[str, Any]] | None = None,
    activation_init: Init = "lsq",
    weight_init: Init = "lsq",
    example: torch.Tensor | None = None,
    activation_offset: bool = False,
) -> nn.Module:
    """Swap every Conv2d and Linear for its quantized twin, keeping weights and biases.

    - ``weight`` / ``activation``: level sets (list, bits shorthand or LevelSet); None = float.
    - ``first_last``: ``"float"`` keeps the first and last layers in full precision, ``"same"``
      quantizes them like the others, a level set gives them their own (the paper's 8 bits).
    - ``example``: a batch traced through the network (lsq.graph): the first and last layers
      are those that run first and last, and a layer whose weight is used without calling it
      stays float. Without it: every Conv2d and Linear, first and last by module order.
    - The first layer's input, a normalised image, takes the signed set with as many levels
      ([0,1,2,3] -> [-2,-1,0,1]); every other input does if the batch that sets its step holds
      a negative value (LsqQuantizer.init_from), unless ``activation_offset`` gives every
      input an LSQ+ learned offset instead.
    - ``layers``: per-layer overrides, ``{glob of module names: {"weight": levels,
      "activation": levels}}`` (a side left out keeps its level set, None is float); the first
      matching pattern applies, after ``first_last``.
    - Weight steps start now, from the weights (``weight_init``: the paper's rule or the
      least-squared-error step); activation steps at the first training batch.
    """
    job = tuple(parse_levels(v) if v is not None else None for v in (weight, activation))
    overrides = {p: {k: _levels(v) for k, v in o.items()} for p, o in (layers or {}).items()}
    first_match = FirstMatch(overrides)
    if not inplace:
        model = copy.deepcopy(model)
    swap, first, last = _layers_to_swap(model, example)
    for name in swap:
        module = model.get_submodule(name)
        twin = QUANTIZED[type(module)]
        role = "first" if name == first else "last" if name == last else None
        pattern = first_match(name)
        w, a = layer_levels(role, job, first_last, overrides[pattern] if pattern else None)
        if name == first and a is not None:
            a = a.as_signed()
        if w is None and a is None:
            continue
        inits = (activation_init, weight_init, activation_offset)
        model.set_submodule(name, twin.from_float(module, w, a, per_channel, *inits))
    return model


def _layers_to_swap(
    model: nn.Module, example: torch.Tensor | None
) -> tuple[list[str], str | None, str | None]:
    """The layers to quantize, and which of them are the first and the last."""
    if example is None:
        first, last = first_and_last(model)
        return [n for n, m in model.named_modules() if type(m) in QUANTIZED], first, last
    order = trace(model, example).order
    return order, (order[0] if order else None), (order[-1] if order else None)


def _levels(value: Any) -> LevelSet | None:
    return None if value is None else parse_levels(value)


def quantize_as_specified(
    model: nn.Module, q: QuantizationSpec, example: torch.Tensor | None = None
) -> nn.Module:
    """A job spec's `quantization` applied to `model` in place (unchanged when it is off);
    `example`, a batch of the job's input shape, finds the layers that run (quantize_model)."""
    if not q.enabled:
        return model
    per_channel = q.granularity == "per_channel"
    layers = {pattern: o.given() for pattern, o in q.layers.items()}
    return quantize_model(
        model, q.weight, q.activation, q.first_last, per_channel, inplace=True, layers=layers,
        activation_init=q.activation_init, weight_init=q.weight_init, example=example,
        activation_offset=q.activation_offset,
    )  # fmt: skip
