"""LSQ: Learned Step Size Quantization (Esser et al., ICLR 2020) as a plain PyTorch library."""

from .convert import quantize_model
from .levels import LevelSet, from_bits, parse_levels
from .quantizer import LsqQuantizer, lsq_quantize
from .spec import JobSpec

__all__ = [
    "JobSpec",
    "LevelSet",
    "LsqQuantizer",
    "from_bits",
    "lsq_quantize",
    "parse_levels",
    "quantize_model",
]
