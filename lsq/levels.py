"""Integer level sets, the constraints users write: weights [-1, 0, 1], activations [0, 1, 2, 3].

A level set is a contiguous run of integers containing 0, so it is fully described by
Q_N (= -min, written positive) and Q_P (= max). Users give it either as the list of levels or
as the shorthand ``{bits: B, signed: bool, symmetric: bool}``.

Plain Python (no torch, no pydantic): the quantizer and the layers build on it without the job
contract, and the contract (lsq.spec) wraps it in a pydantic field type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from .text import show

MAX_BITS = 16
ACCEPTED = (
    "a list of contiguous integers that contains 0, e.g. [-1, 0, 1] or [0, 1, 2, 3], "
    "{bits: B, signed: true|false, symmetric: true|false} with 1 <= B <= 16, "
    "or {min: LOW, max: HIGH} with LOW <= 0 <= HIGH"
)


@dataclass(frozen=True)
class LevelSet:
    """The levels -q_n, ..., 0, ..., q_p."""

    q_n: int
    q_p: int

    def __post_init__(self) -> None:
        if self.q_n < 0 or self.q_p < 0:
            raise ValueError(f"q_n and q_p must be >= 0, got {self.q_n}, {self.q_p}")
        if self.q_n + self.q_p < 1:
            raise ValueError("a level set needs at least 2 levels")
        if self.q_n + self.q_p + 1 > 2**MAX_BITS:
            raise ValueError(f"a level set may have at most 2^{MAX_BITS} levels")

    @property
    def levels(self) -> list[int]:
        return list(range(-self.q_n, self.q_p + 1))

    @property
    def size(self) -> int:
        return self.q_n + self.q_p + 1

    @property
    def signed(self) -> bool:
        return self.q_n > 0

    def as_signed(self) -> LevelSet:
        """The signed set with as many levels (two's-complement style: [0..3] -> [-2..1])."""
        if self.signed:
            return self
        return LevelSet(q_n=self.size // 2, q_p=self.size - self.size // 2 - 1)

    def to_json(self) -> list[int] | dict[str, Any]:
        """The list of levels, or a shorthand when the list would be long (never a list of
        thousands: specs written out layer by layer repeat it)."""
        if self.size <= 16:
            return self.levels
        bits = (self.size - 1).bit_length()
        for signed, symmetric in ((False, False), (True, False), (True, True)):
            if from_bits(bits, signed, symmetric) == self:
                return {"bits": bits, "signed": signed, "symmetric": symmetric}
        return {"min": -self.q_n, "max": self.q_p}

    def __str__(self) -> str:
        if self.size <= 8:
            return "[" + ",".join(map(str, self.levels)) + "]"
        return f"[{-self.q_n}..{self.q_p}]"


def from_bits(bits: int, signed: bool = False, symmetric: bool = False) -> LevelSet:
    """Unsigned: [0, 2^b-1]. Signed: [-2^(b-1), 2^(b-1)-1]. Symmetric: [-(2^(b-1)-1), ...]."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be between 1 and {MAX_BITS}, got {bits}")
    if not signed:
        if symmetric:
            raise ValueError("symmetric applies to signed level sets only")
        return LevelSet(0, 2**bits - 1)
    if bits == 1:
        if symmetric:
            raise ValueError("a 1-bit symmetric signed set would be just [0]; use bits >= 2")
        return LevelSet(1, 0)
    half = 2 ** (bits - 1)
    return LevelSet(half - 1 if symmetric else half, half - 1)


def parse_levels(value: Any) -> LevelSet:
    """A level list, the bits shorthand or a LevelSet; a ValueError says what is wrong."""
    if isinstance(value, LevelSet):
        return value
    if isinstance(value, dict) and ("min" in value or "max" in value):
        return _from_range(value)
    if isinstance(value, dict):
        unknown = set(value) - {"bits", "signed", "symmetric"}
        if unknown:
            raise ValueError(f"unknown key(s) {show(sorted(unknown))}; expected {ACCEPTED}")
        bits = value.get("bits")
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise ValueError(f"'bits' must be an integer; expected {ACCEPTED}")
        signed, symmetric = value.get("signed", False), value.get("symmetric", False)
        if not isinstance(signed, bool) or not isinstance(symmetric, bool):
            raise ValueError("'signed' and 'symmetric' must be true or false")
        return from_bits(bits, signed, symmetric)
    if not isinstance(value, list | tuple):
        raise ValueError(f"got {show(value)}; expected {ACCEPTED}")
    # Everything below is arithmetic on the given list, bounded by its length: a request never
    # makes the server build a range it chose.
    if len(value) > 2**MAX_BITS:
        raise ValueError(f"{len(value)} levels; at most 2^{MAX_BITS} are allowed")
    if len(value) < 2:
        raise ValueError(f"{show(value)} has fewer than 2 levels; expected {ACCEPTED}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{show(value)} contains non-integers; expected {ACCEPTED}")
    low, high = min(value), max(value)
    if len(set(value)) != len(value):
        raise ValueError(f"{show(value)} repeats a level; expected {ACCEPTED}")
    if high - low + 1 != len(value):
        raise ValueError(f"{show(value)} is not contiguous; expected {ACCEPTED}")
    if not low <= 0 <= high:
        raise ValueError(f"{show(value)} does not contain 0; expected {ACCEPTED}")
    return LevelSet(q_n=-low, q_p=high)


def _from_range(value: dict[str, Any]) -> LevelSet:
    if set(value) != {"min", "max"}:
        raise ValueError(f"give exactly 'min' and 'max'; expected {ACCEPTED}")
    low, high = value["min"], value["max"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise ValueError(f"'min' and 'max' must be integers; expected {ACCEPTED}")
    if not low <= 0 <= high:
        raise ValueError(f"min {low} and max {high} do not take in 0; expected {ACCEPTED}")
    return LevelSet(q_n=-low, q_p=high)  # it bounds the size (at most 2^16 levels)


# How a step starts: lsq, the paper's rule; mse, the least squared quantization error.
Init = Literal["lsq", "mse"]


Sides = tuple[LevelSet | None, LevelSet | None]  # (weight, activation); None is float


def layer_levels(
    role: str | None,
    job: Sides,
    first_last: str | LevelSet,
    override: dict[str, LevelSet | None] | None,
) -> Sides:
    """What one layer gets: the job's (weight, activation) sets, unless it is the first or the
    last layer (`role`) and `first_last` says otherwise; then `override`, the sides given by
    the first per-layer pattern that matches it (FirstMatch), replaces those. Shared by the
    conversion and by checks that must not build the network."""
    w, a = job
    if role is not None and first_last == "float":
        w = a = None
    elif role is not None and first_last != "same":
        w = a = parse_levels(first_last)
    if override is not None:
        w, a = override.get("weight", w), override.get("activation", a)
    return w, a


def _is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern or "[" in pattern


class FirstMatch:
    """The first of `patterns` (fnmatch globs, in order) that matches a name. Patterns without
    a wildcard (the layer names a sensitivity probe writes out) are found by lookup, so a spec
    naming every layer is checked in linear time."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = list(patterns)
        self.literal: dict[str, int] = {}
        for i, p in enumerate(self.patterns):
            if not _is_glob(p):
                self.literal.setdefault(p, i)
        self.globs = [(i, p) for i, p in enumerate(self.patterns) if _is_glob(p)]

    def __call__(self, name: str) -> str | None:
        best = self.literal.get(name)
        for i, pattern in self.globs:
            if best is not None and i > best:
                break
            if fnmatchcase(name, pattern):
                return pattern
        return None if best is None else self.patterns[best]
