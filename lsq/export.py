"""Integer export: each quantized layer's weights as integer codes plus its step sizes.

The file holds, per quantized layer, ``weight_codes`` (int8 when the levels fit, else int16
or int32), the weight step(s) and the input step, and ``float_state`` with everything that
stays in floating point (batch norm, biases, unquantized layers). ``load_integer`` rebuilds
the network from the spec stored in the file and sets each weight to codes * step, so its
predictions equal the fake-quantized model's (quantizing weights that lie on their grid
changes no value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .convert import quantize_as_specified
from .data import DatasetInfo
from .layers import QuantConv2d, QuantLinear
from .networks import build_network
from .quantizer import MIN_STEP
from .spec import JobSpec

FORMAT = "lsq-int/1"


def code_dtype(q_n: int, q_p: int) -> torch.dtype:
    for dtype in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= -q_n and q_p <= info.max:
            return dtype
    raise ValueError("levels do not fit in int32")


def quantized_layers(model: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}


def integer_state(model: nn.Module) -> dict:
    """The integer codes and steps of every weight-quantized layer, and the rest as floats."""
    layers, dropped = {}, set()
    for name, layer in quantized_layers(model).items():
        q = layer.weight_quantizer
        if q is None:
            continue
        layers[name] = {
            "weight_codes": q.codes(layer.weight).to(code_dtype(q.q_n, q.q_p)).cpu(),
            "weight_step": q.step.detach().clamp_min(MIN_STEP).float().cpu(),
            "weight_levels": [-q.q_n, q.q_p],
        }
        dropped.add(f"{name}.weight")
    float_state = {k: v.cpu() for k, v in model.state_dict().items() if k not in dropped}
    return {"layers": layers, "float_state": float_state}


@dataclass(frozen=True)
class Compliance:
    """What an integer export holds: its size, and any code outside its level set."""

    model_bits: int  # codes at ceil(log2(levels)) bits; steps and the float rest at 32
    float_bits: int  # the same network in float32 (no quantizers)
    violations: list[str]

    @property
    def compression(self) -> float:
        return self.float_bits / self.model_bits


def check(state: dict) -> Compliance:
    """Check an integer state (``integer_state`` or a loaded model-int.pt): every weight code
    lies in its layer's level set [-Q_N, Q_P]; and measure the model's size in bits."""
    bits = floats = 0
    violations = []
    for name, layer in state["layers"].items():
        codes, step = layer["weight_codes"], layer["weight_step"]
        low, high = layer["weight_levels"]
        outside = int(((codes < low) | (codes > high)).sum())
        if outside:
            violations.append(f"{name}: {outside} weight codes outside [{low}, {high}]")
        bits += codes.numel() * math.ceil(math.log2(high - low + 1)) + 32 * step.numel()
        floats += 32 * codes.numel()
    floating = {k: v for k, v in state["float_state"].items() if v.is_floating_point()}
    # the input steps (and LSQ+ offsets) belong to the quantized model; a float one has none
    input_state = ("input_quantizer.step", "input_quantizer.offset")
    inputs = sum(32 * v.numel() for k, v in floating.items() if k.endswith(input_state))
    rest = sum(32 * v.numel() for k, v in floating.items() if "_quantizer." not in k)
    return Compliance(bits + inputs + rest, floats + rest, violations)


def save_integer(model: nn.Module, spec: JobSpec, info: dict, path: Path) -> None:
    """Write the integer export of a trained quantized `model` built from `spec`."""
    payload = {"format": FORMAT, "spec": spec.model_dump(mode="json"), "dataset": info}
    checkpoint.save_atomic({**payload, **integer_state(model)}, path)


def read_integer(path: str | Path) -> dict:
    """The contents of an integer export (ValueError when it is not one)."""
    data = checkpoint.load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an LSQ integer export ({FORMAT})")
    return data


def _network(data: dict) -> tuple[nn.Module, JobSpec]:
    spec = JobSpec.model_validate(data["spec"])
    info = DatasetInfo(**data["dataset"])
    model = build_network(spec.model, info.num_classes, info.in_channels, info.image_size, False)
    return quantize_as_specified(model, spec.quantization, info.example()), spec


def load_integer(path: str | Path) -> tuple[nn.Module, JobSpec]:
    """Rebuild the quantized network from an integer export (eval mode, on the CPU), its
    weights set to codes * step."""
    data = read_integer(path)
    model, spec = _network(data)
    state = dict(data["float_state"])
    for name, layer in data["layers"].items():
        step = layer["weight_step"]
        codes = layer["weight_codes"].float()
        state[f"{name}.weight"] = codes * (step.reshape(-1, *[1] * (codes.dim() - 1)))
        state[f"{name}.weight_quantizer.step"] = layer["weight_step"]
    model.load_state_dict(state)
    return model.eval(), spec


def load_trained(int_path: str | Path, model_path: str | Path) -> tuple[nn.Module, DatasetInfo]:
    """A finished run's quantized network as trained (its model.pt, every quantizer in place,
    eval mode, CPU) and its dataset's shape, from the spec its integer export records."""
    data = read_integer(int_path)
    model, _ = _network(data)
    model.load_state_dict(checkpoint.load(model_path))
    return model.eval(), DatasetInfo(**data["dataset"])
