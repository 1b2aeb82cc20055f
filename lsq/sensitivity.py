"""Per-layer sensitivity in one job, without training: which layers cost accuracy when quantized.

The network of model.init is quantized as the spec says and its steps initialised as training
would (weights from themselves, activations from one training batch). Then each probed layer in
turn is the only quantized one (``quantize_one``: the other layers' quantizers are set aside)
or the only float one (``float_one``), and the test set is evaluated. The drop per layer
against the float network says which layers deserve more bits; probes that fine-tune are one
job each (an experiment of kind sensitivity plans them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn

from .layers import QUANTIZED
from .metrics import Accuracy, LayerSensitivity
from .spec import SensitivitySpec


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's quantized Conv2d and Linear twins by module name."""
    twins = tuple(QUANTIZED.values())
    return {name: m for name, m in model.named_modules() if isinstance(m, twins)}


@contextmanager
def float_layers(layers: Iterable[nn.Module]) -> Iterator[None]:
    """Inside the block the layers compute in float: their quantizers set aside, then put back."""
    saved = [(m, m.weight_quantizer, m.input_quantizer) for m in layers]
    for m, _, _ in saved:
        m.weight_quantizer = m.input_quantizer = None
    try:
        yield
    finally:
        for m, weight, activation in saved:
            m.weight_quantizer, m.input_quantizer = weight, activation


def probe(
    model: nn.Module,
    names: list[str],
    spec: SensitivitySpec,
    measure: Callable[[], Accuracy],
    start: Accuracy,
    after_each: Callable[[int], None] | None = None,
) -> list[LayerSensitivity]:
    """One probe per layer of `names` (quantized layers of `model`): `measure()` with only
    that layer quantized, or only it in float; drops against `start`, the float network's.
    `after_each(i)` after the i-th probe (progress, cancellation)."""
    layers = quantized_layers(model)
    out = []
    for i, name in enumerate(names):
        layer = layers[name]
        others = [m for n, m in layers.items() if n != name]
        with float_layers(others if spec.mode == "quantize_one" else [layer]):
            got = measure()
        w, a = layer.weight_quantizer, layer.input_quantizer
        out.append(
            LayerSensitivity(
                layer=name,
                weight=str(w.levels) if w is not None else None,
                activation=str(a.levels) if a is not None else None,
                parameters=sum(p.numel() for p in (layer.weight, layer.bias) if p is not None),
                test_top1=got.top1,
                test_top5=got.top5,
                drop_top1=start.top1 - got.top1,
                drop_top5=start.top5 - got.top5,
            )
        )
        if after_each is not None:
            after_each(i)
    return out
