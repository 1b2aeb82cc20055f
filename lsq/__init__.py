"""LSQ: Learned Step Size Quantization (Esser et al., ICLR 2020) as a plain PyTorch library.

Names load on first use, so ``lsq.spec`` (the job contract the API validates) and the CLI
start without importing torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "JobSpec": "spec",
    "LevelSet": "levels",
    "from_bits": "levels",
    "parse_levels": "levels",
    "LsqQuantizer": "quantizer",
    "lsq_quantize": "quantizer",
    "quantize_model": "convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lsq' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
