"""Turn a float network into a quantized one, driven by configuration, not by model code."""

from __future__ import annotations

import copy
from fnmatch import fnmatchcase
from typing import Any, Literal

from torch import nn

from .layers import QUANTIZED
from .levels import LevelSet, parse_levels
from .spec import QuantizationSpec

FirstLast = Literal["float", "same"] | LevelSet


def first_and_last(model: nn.Module) -> tuple[str | None, str | None]:
    """Names of the first Conv2d/Linear and of the last Linear, in module registration order."""
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
) -> nn.Module:
    """Swap every Conv2d and Linear for its quantized twin, keeping weights and biases.

    - ``weight`` / ``activation``: level sets (list, bits shorthand or LevelSet); None = float.
    - ``first_last``: ``"float"`` keeps the first conv and the last linear in full precision,
      ``"same"`` quantizes them like the others, a level set gives them their own (both weight
      and input), as the paper's 8 bits.
    - The first layer's input is a normalised image and so signed: an unsigned activation set
      there is replaced by the signed set with as many levels ([0,1,2,3] -> [-2,-1,0,1]).
      Every other quantized layer's input is taken to be post-ReLU (true of all our networks).
    - ``layers``: per-layer overrides, ``{glob of module names: {"weight": levels,
      "activation": levels}}`` (a side left out keeps its level set, None is float); the first
      matching pattern applies, after ``first_last``.
    - The activation step is initialised from the first training batch; weight steps now.
    """
    weight_levels = parse_levels(weight) if weight is not None else None
    act_levels = parse_levels(activation) if activation is not None else None
    if not inplace:
        model = copy.deepcopy(model)
    first, last = first_and_last(model)
    for name, module in list(model.named_modules()):
        twin = QUANTIZED.get(type(module))
        if twin is None:
            continue
        w, a = weight_levels, act_levels
        if name in (first, last) and first_last == "float":
            w = a = None
        elif name in (first, last) and first_last != "same":
            w = a = parse_levels(first_last)
        w, a = _override(name, w, a, layers or {})
        if name == first and a is not None:
            a = a.as_signed()
        if w is None and a is None:
            continue
        _set_submodule(model, name, twin.from_float(module, w, a, per_channel))
    return model


def _override(name: str, w: Any, a: Any, layers: dict[str, dict[str, Any]]) -> tuple[Any, Any]:
    for pattern, sides in layers.items():
        if fnmatchcase(name, pattern):
            w = _levels(sides["weight"]) if "weight" in sides else w
            a = _levels(sides["activation"]) if "activation" in sides else a
            break
    return w, a


def _levels(value: Any) -> LevelSet | None:
    return None if value is None else parse_levels(value)


def quantize_as_specified(model: nn.Module, q: QuantizationSpec) -> nn.Module:
    """A job spec's `quantization` applied to `model` in place (unchanged when it is off)."""
    if not q.enabled:
        return model
    per_channel = q.granularity == "per_channel"
    layers = {pattern: o.given() for pattern, o in q.layers.items()}
    return quantize_model(
        model, q.weight, q.activation, q.first_last, per_channel, inplace=True, layers=layers
    )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
