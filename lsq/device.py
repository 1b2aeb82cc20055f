"""Where a job trains and in which precision: CUDA when there is one, else the CPU."""

from __future__ import annotations

import contextlib

import torch

from .distributed import SINGLE, Rank


def pick_device(choice: str, rank: Rank = SINGLE) -> torch.device:
    """The device of `rank` for training.device `choice` (auto, cpu or cuda)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if rank.world > torch.cuda.device_count():
        raise RuntimeError(
            f"training.devices is {rank.world} but this worker sees "
            f"{torch.cuda.device_count()} CUDA device(s) (CUDA_VISIBLE_DEVICES)"
        )
    torch.cuda.set_device(rank.rank)
    return torch.device("cuda", rank.rank)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32. auto = bf16 (fp16 on older GPUs) on CUDA."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("training.precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast in `dtype`, or nothing for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
