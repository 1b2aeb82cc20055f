"""torch.compile for the training step, used where it pays.

Compiling fuses each quantizer with the batch norm and ReLU around it, so W/A quantized
training costs about what full precision does; eager, each quantizer is several extra passes
over its activations. Compiling takes tens of seconds, so ``training.compile: auto`` compiles
only a job whose eager training (timed on its first batches) has at least
COMPILE_PAYS_AFTER seconds left, and keeps the compiled model only if its steps are faster.
``on`` always compiles, ``off`` never does. A compile that fails falls back to eager.

The compiled module shares its parameters with the eager one: a last, smaller batch runs
eagerly instead of compiling a second graph for its shape, and evaluation stays eager.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

COMPILE_PAYS_AFTER = 600.0  # seconds of eager training left for `auto` to compile
TIMED_STEPS = 5  # steps timed eagerly, then compiled, for `auto`'s two decisions

Choice = Literal["auto", "on", "off"]


def compiler_missing() -> str | None:
    """Why torch.compile cannot run here (its code generators need a C++ compiler), or None."""
    if shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"):
        return None
    return "no C++ compiler (g++) on this host"


@dataclass
class StepCompiler:
    """Picks the module each training step runs: eager, or compiled once it pays."""

    choice: Choice
    eager: nn.Module
    total_steps: int
    device: torch.device
    compiled: nn.Module | None = None
    compile_seconds: float = 0.0  # since the last take_seconds()
    state: Literal["timing_eager", "compiling", "timing_compiled", "settled"] = "timing_eager"
    times: dict[str, list[float]] = field(default_factory=lambda: {"eager": [], "compiled": []})
    steps_done: int = 0

    def __post_init__(self) -> None:
        if self.choice == "off" or self._missing():
            self.state = "settled"
        elif self.choice == "on":
            self.state = "compiling"

    def _missing(self) -> bool:
        reason = compiler_missing()
        if reason and self.choice == "on":
            log.warning("training.compile is on but %s: training in eager mode", reason)
        return reason is not None

    def step(self, run: Callable[[nn.Module], Any], full_batch: bool) -> Any:
        """``run(module)`` for one batch, on the module the policy picks (and timed by it)."""
        self.steps_done += 1
        if not full_batch:  # a last, smaller batch: no second graph for its shape
            return run(self.eager)
        if self.state == "settled":
            return run(self.eager if self.compiled is None else self.compiled)
        if self.state == "compiling":
            return self._compile_and_run(run)
        kind = "eager" if self.state == "timing_eager" else "compiled"
        start = self._now()
        out = run(self.eager if kind == "eager" else self.compiled)
        self.times[kind].append(self._now() - start)
        if len(self.times[kind]) == TIMED_STEPS:
            self._decide(kind)
        return out

    def _compile_and_run(self, run: Callable[[nn.Module], Any]) -> Any:
        start = self._now()
        try:
            self.compiled = torch.compile(self.eager, dynamic=False)
            out = run(self.compiled)
        except Exception as e:  # noqa: BLE001 - any compiler failure: train on, eagerly
            log.warning("torch.compile failed (%s): training in eager mode", str(e)[:500])
            self.compiled = None
        self.compile_seconds += self._now() - start  # a failed compile is not training either
        if self.compiled is None:
            self.state = "settled"
            return run(self.eager)
        self.state = "timing_compiled" if self.choice == "auto" else "settled"
        return out

    def _decide(self, kind: str) -> None:
        eager = statistics.median(self.times["eager"])
        if kind == "eager":
            left = (self.total_steps - self.steps_done) * eager
            pays = left > COMPILE_PAYS_AFTER
            self.state = "compiling" if pays else "settled"
            return
        compiled = statistics.median(self.times["compiled"])
        if compiled >= eager:
            log.info("compiled steps (%.3fs) are no faster than eager: eager", compiled)
            self.compiled = None
        self.state = "settled"

    def _now(self) -> float:
        if self.device.type == "cuda":  # only while timing: the first few steps of a job
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def take_seconds(self) -> float:
        """The seconds spent compiling since the last call (so, per epoch)."""
        seconds, self.compile_seconds = self.compile_seconds, 0.0
        return seconds
