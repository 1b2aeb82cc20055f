"""Checkpoints: written atomically every epoch, read back with errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import weights
from .file_kinds import SAFETENSORS, NotAModel, kind_of
from .files import atomic_file


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save, atomically: a crash never leaves half a checkpoint."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def load(path: str | Path, *, lazy: bool = False) -> Any:
    """Load a file written by torch.save (tensors and plain containers only).

    `lazy` is for a caller that wants the small fields alone: the tensors are mapped, not
    read, and not to be used (torch maps them through a second open by name, so a file renamed
    over meanwhile gives another file's bytes). Where mapping fails (that, or a file older than
    torch's zip format), the file is read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except Exception as e:
        if lazy:
            return load(path)
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {e}") from None


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Load a float state dict (a model.pt, or safetensors weights) into `model`.

    Step sizes of a quantized model's model.pt are dropped: a new quantization starts from the
    paper's initialisation, computed from these weights.
    """
    if is_safetensors(path):
        tensors = weights.read_header(path)
        if problems := weights.mismatches(tensors, model):
            raise ValueError(f"{path} does not fit this network: {'; '.join(problems)}")
        model.load_state_dict(weights.load(path), strict=False)  # quantizers keep their steps
        return
    state = load(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint.pt works too
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    state = {k: v for k, v in state.items() if "_quantizer." not in k}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit this network: {str(e)[:600]}") from None


def is_safetensors(path: str | Path) -> bool:
    """Whether `path` starts as safetensors weights do (else it is read as a torch.save file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with path.open("rb") as f:
        head = f.read(16)
    try:
        return kind_of(head, path.stat().st_size) == SAFETENSORS
    except NotAModel:
        return False
