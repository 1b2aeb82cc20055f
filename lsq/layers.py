"""Quantized twins of Conv2d and Linear: the torch layer plus a weight and an input quantizer.

Each is built like its torch parent, with the level sets as keyword arguments
(``QuantConv2d(3, 16, 3, weight_levels=[-1, 0, 1], activation_levels=[0, 1, 2, 3])``);
``from_float`` builds one with a float layer's hyperparameters and copies its weights.
A side whose level set is None stays full precision.
"""

from __future__ import annotations

from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from .levels import Init
from .quantizer import LsqQuantizer


def _maybe(quantizer: LsqQuantizer | None, v: torch.Tensor) -> torch.Tensor:
    return v if quantizer is None else quantizer(v)


class _Quantized(nn.Module):
    """Mixed in before the torch layer: its arguments, then the level sets as keywords."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self,
        *args: Any,
        weight_levels: Any = None,
        activation_levels: Any = None,
        per_channel: bool = False,
        activation_init: Init = "lsq",
        weight_init: Init = "lsq",
        activation_offset: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # the torch layer, next in the MRO
        self.register_module("weight_quantizer", None)  # its place: before the input's
        if weight_levels is not None:
            self.quantize_weight(weight_levels, per_channel, weight_init)
        self.input_quantizer = None
        if activation_levels is not None:
            self.input_quantizer = LsqQuantizer(
                activation_levels, activation=True, init=activation_init,
                offset=activation_offset, device=self.weight.device,
            )  # fmt: skip

    def quantize_weight(self, levels: Any, per_channel: bool = False, init: Init = "lsq") -> None:
        """Give the weight a quantizer, its step set from the weight as it is now. A grouped
        convolution's is per channel whatever `per_channel` says: one step for every 3x3
        depthwise filter sends most of them to all zeros, and the batch norm after a zero
        output then blows its gradients up (MobileNetV2 at ternary diverged)."""
        per_channel = per_channel or getattr(self, "groups", 1) > 1
        channels = self.weight.shape[0] if per_channel else 1
        quantizer = LsqQuantizer(levels, channels=channels, init=init, device=self.weight.device)
        if not self.weight.is_meta:
            quantizer.init_from(self.weight)
        self.weight_quantizer = quantizer

    @staticmethod
    def _hyperparameters(layer: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_float(
        cls,
        layer: nn.Module,
        weight: Any = None,
        activation: Any = None,
        per_channel: bool = False,
        activation_init: Init = "lsq",
        weight_init: Init = "lsq",
        activation_offset: bool = False,
    ) -> Self:
        """The quantized twin of `layer`: its hyperparameters, device, weight and bias (and
        their requires_grad), in its training mode. Hooks on `layer` are not carried over."""
        w = layer.weight
        with torch.random.fork_rng(devices=[w.device] if w.is_cuda else []):
            # The constructor's random init is overwritten below: keep the caller's RNG as is.
            q = cls(
                **cls._hyperparameters(layer),
                bias=layer.bias is not None,
                device=w.device,
                dtype=w.dtype,
                activation_levels=activation,
                activation_init=activation_init,
                activation_offset=activation_offset,
            )
        for name in ("weight", "bias"):
            if getattr(layer, name) is not None:
                with torch.no_grad():
                    getattr(q, name).copy_(getattr(layer, name))
                getattr(q, name).requires_grad_(getattr(layer, name).requires_grad)
        if weight is not None:  # its step from the weights now in place, once
            q.quantize_weight(weight, per_channel, weight_init)
        return q.train(layer.training)


class QuantConv2d(_Quantized, nn.Conv2d):
    @staticmethod
    def _hyperparameters(layer: nn.Conv2d) -> dict[str, Any]:
        names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation")
        return {n: getattr(layer, n) for n in (*names, "groups", "padding_mode")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _maybe(self.weight_quantizer, self.weight)
        return self._conv_forward(_maybe(self.input_quantizer, x), w, self.bias)


class QuantLinear(_Quantized, nn.Linear):
    @staticmethod
    def _hyperparameters(layer: nn.Linear) -> dict[str, Any]:
        return {"in_features": layer.in_features, "out_features": layer.out_features}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _maybe(self.weight_quantizer, self.weight)
        return F.linear(_maybe(self.input_quantizer, x), w, self.bias)


QUANTIZED: dict[type[nn.Module], type[_Quantized]] = {
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
}
