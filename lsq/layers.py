"""Quantized twins of Conv2d and Linear: the torch layer plus a weight and an input quantizer."""

from __future__ import annotations

import copy
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from .levels import LevelSet
from .quantizer import LsqQuantizer


def _maybe(quantizer: LsqQuantizer | None, v: torch.Tensor) -> torch.Tensor:
    return v if quantizer is None else quantizer(v)


class _Quantized:
    """Built from a float layer; a side whose level set is None stays full precision."""

    weight: nn.Parameter
    weight_quantizer: LsqQuantizer | None
    input_quantizer: LsqQuantizer | None

    @classmethod
    def from_float(
        cls,
        layer: nn.Module,
        weight: LevelSet | None,
        activation: LevelSet | None,
        per_channel: bool = False,
    ) -> Self:
        q = copy.deepcopy(layer)  # every hyperparameter, the weight and the bias, as they are
        q.__class__ = cls
        channels = q.weight.shape[0] if per_channel else 1
        q.weight_quantizer = LsqQuantizer(weight, channels=channels) if weight else None
        if q.weight_quantizer is not None:
            q.weight_quantizer.init_from(q.weight)
        q.input_quantizer = LsqQuantizer(activation, activation=True) if activation else None
        return q


class QuantConv2d(_Quantized, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _maybe(self.weight_quantizer, self.weight)
        return self._conv_forward(_maybe(self.input_quantizer, x), w, self.bias)


class QuantLinear(_Quantized, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _maybe(self.weight_quantizer, self.weight)
        return F.linear(_maybe(self.input_quantizer, x), w, self.bias)


QUANTIZED: dict[type[nn.Module], type[_Quantized]] = {
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
}
