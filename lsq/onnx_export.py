"""ONNX export of a quantized network: a standard graph that onnxruntime (or any ONNX runtime)
runs, with each quantized tensor as Clip -> QuantizeLinear -> DequantizeLinear.

The clip enforces the level set ([-Q_N * s, Q_P * s], per channel for per-channel weights), and
QuantizeLinear rounds to the integer code (int8, zero point 0) that DequantizeLinear scales
back, so the graph computes what the fake-quantized model does. Level sets must fit int8
(Q_N <= 128, Q_P <= 127) or, unsigned, uint8 (Q_P <= 255). The exporter is torch's
TorchScript one (its dynamo exporter cannot trace the quantize ops with tensor scales), opset 17.

A layer with float weights beside a quantized input (activation-only jobs, a per-layer
`weight: null`): onnxruntime's default WeightBiasQuantization pass quantizes such weights to
int8 on its own; create the session with `disabled_optimizers=["WeightBiasQuantization"]` to
run the graph as written.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from .layers import QuantConv2d, QuantLinear
from .quantizer import MIN_STEP, LsqQuantizer

OPSET = 17


class _QuantizeDequantize(nn.Module):
    """What an LsqQuantizer computes, in the ops ONNX has (Clip, QuantizeLinear, ...)."""

    def __init__(self, q: LsqQuantizer) -> None:
        super().__init__()
        if q.offset is not None:
            # Written as Sub, QDQ, Add (or Div, Round, Mul), onnxruntime's default graph
            # optimisations changed vit_tiny's logits by 10: no graph rather than a wrong one.
            raise ValueError("ONNX export: LSQ+ offsets (activation_offset) are not exported")
        # int8 codes, or uint8 for an unsigned set (8-bit activations: 0..255)
        self.range = (0, 255) if q.q_n == 0 else (-128, 127)
        if -q.q_n < self.range[0] or q.q_p > self.range[1]:
            raise ValueError(f"ONNX export: levels {q.levels} fit neither int8 nor uint8")
        self.q_n, self.q_p = q.q_n, q.q_p
        step = q.step.detach().clamp_min(MIN_STEP).float().cpu()
        self.register_buffer("step", step)
        self.per_channel = step.numel() > 1

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not self.per_channel:
            s = float(self.step)
            v = torch.clamp(v, -self.q_n * s, self.q_p * s)
            return torch.fake_quantize_per_tensor_affine(v, s, 0, *self.range)
        s = self.step.reshape(-1, *[1] * (v.dim() - 1))
        v = torch.maximum(torch.minimum(v, self.q_p * s), -self.q_n * s)
        zero = torch.zeros(self.step.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(v, self.step, zero, 0, *self.range)


def exportable(model: nn.Module) -> nn.Module:
    """A copy of the quantized `model` (eval mode, CPU) whose quantizers are ONNX ops."""
    model = copy.deepcopy(model).cpu().eval()
    for layer in model.modules():
        if isinstance(layer, QuantConv2d | QuantLinear):
            for side in ("weight_quantizer", "input_quantizer"):
                q = getattr(layer, side)
                if q is not None:
                    setattr(layer, side, _QuantizeDequantize(q))
    return model


def export_onnx(model: nn.Module, in_channels: int, image_size: int, path: Path) -> None:
    """Write `model` (quantized, as trained) to `path` as ONNX: input `images` (N, C, H, W)
    normalised as for training, output `logits` (N, classes); the batch size is free."""
    example = torch.zeros(2, in_channels, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        # Expected, and noise in a job's log: a step read as a Python float is a constant of
        # the graph (TracerWarning), and the exporter cannot fold some Slice ops.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(
            exportable(model),
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
