"""safetensors weights: checked whole before a byte of tensor data is used, then loaded with
safetensors' own reader (no pickle, no code), and matched against a network by name and shape.

The checks are those a hostile file needs: a header that claims more than the file holds,
offsets out of order, overlapping or with gaps, a tensor whose bytes do not match its shape,
an unknown dtype.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .file_kinds import SAFETENSORS, NotAModel, kind_of, parse_json_header
from .text import listed, show

MAX_TENSORS = 100_000
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]


def read_header(path: str | Path) -> dict[str, Tensor]:
    """Each tensor of a safetensors file by name, after checking that the header describes
    the file exactly; NotAModel names what is wrong."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        kind = kind_of(f.read(16), size)
        if kind != SAFETENSORS:
            raise NotAModel(f"{path.name} is an {kind} file, not safetensors weights")
        f.seek(0)
        (length,) = struct.unpack("<Q", f.read(8))
        raw = f.read(length)
    header = parse_json_header(raw)
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise NotAModel(f"{len(header):,} tensors; at most {MAX_TENSORS:,}")
    return _tensors(header, size - 8 - length)


def _tensors(header: dict, data_bytes: int) -> dict[str, Tensor]:
    tensors, spans = {}, []
    for name, entry in header.items():
        tensor, span = _entry(name, entry)
        tensors[name] = tensor
        spans.append((*span, name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else "leaves a gap before it"
            raise NotAModel(f"tensor {show(name)} starts at byte {begin:,} and {what}")
        end = stop
    if end != data_bytes:
        raise NotAModel(
            f"the header describes {end:,} bytes of tensor data, the file holds {data_bytes:,} "
            "(truncated, or not what the header says)"
        )
    return tensors


def _entry(name: str, entry: object) -> tuple[Tensor, tuple[int, int]]:
    def bad(why: str) -> NotAModel:
        return NotAModel(f"tensor {show(name)}: {why}")

    if not isinstance(entry, dict):
        raise bad("its header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise bad(f"unknown dtype {show(dtype)}")
    if not isinstance(shape, list) or not all(_count(d) for d in shape) or len(shape) > 8:
        raise bad(f"shape {show(shape)} is not a list of at most 8 sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))):
        raise bad(f"data_offsets {show(offsets)} are not two byte offsets")
    begin, stop = offsets
    if stop - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise bad(
            f"shape {shape} of {dtype} needs {math.prod(shape) * DTYPE_BYTES[dtype]:,} bytes, "
            f"its offsets give {stop - begin:,}"
        )
    return Tensor(dtype, tuple(shape)), (begin, stop)


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**48


def mismatches(tensors: dict[str, Tensor], model: nn.Module) -> list[str]:
    """What keeps `tensors` from being `model`'s float state dict: every missing, unexpected
    and wrongly shaped tensor, by name (empty when they fit)."""
    wanted = {k: tuple(v.shape) for k, v in float_state(model).items()}
    missing = [k for k in wanted if k not in tensors]
    unexpected = [k for k in tensors if k not in wanted]
    shapes = [
        f"{show(k)} is {list(t.shape)}, the network's is {list(wanted[k])}"
        for k, t in tensors.items()
        if k in wanted and t.shape != wanted[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {listed(missing)}")
    if unexpected:  # a user's names: each cut short
        problems.append(
            f"unexpected {len(unexpected)} tensor(s): {listed(list(map(show, unexpected)))}"
        )
    if shapes:
        problems.append(f"{len(shapes)} wrongly shaped: " + "; ".join(shapes[:10]))
    return problems


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A network's state dict without its quantizers' step sizes (a float network's weights)."""
    return {k: v for k, v in model.state_dict().items() if "_quantizer." not in k}


def load(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checked safetensors file (read_header first), on the CPU."""
    read_header(path)
    return load_file(str(path), device="cpu")
