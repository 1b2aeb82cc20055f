"""torch.compile for the training step, used where it pays.

Compiling fuses each quantizer with the batch norm and ReLU around it, so W/A quantized
training costs about what full precision does; eager, each quantizer is several extra passes
over its activations. Compiling costs seconds with the compile cache warm and tens of seconds
cold (lsq.compile_cache), so ``training.compile: auto`` compiles when the steps left would save
more than the compile is expected to cost: both from the cost book's memory of this graph
(eager and compiled step times, its last compile), or, for a graph never compiled here, from
its first eager steps, the typical cold compile and the typical saving. It keeps the compiled
model only if its steps are faster. ``on`` always compiles, ``off`` never does. A compile that
fails falls back to eager.

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

from . import compile_cache
from .compile_cache import CostBook

log = logging.getLogger(__name__)

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
    amp: torch.dtype | None = None
    costs: CostBook | None = None  # the process's cache folder's book unless given
    compiled: nn.Module | None = None
    compile_seconds: float = 0.0  # since the last take_seconds()
    state: Literal["timing_eager", "compiling", "timing_compiled", "settled"] = "timing_eager"
    times: dict[str, list[float]] = field(default_factory=lambda: {"eager": [], "compiled": []})
    steps_done: int = 0
    key: str = ""  # the graph's, in the cost book: set on the first full batch
    eager_step: float | None = None  # seconds, measured or remembered

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

    def step(self, run: Callable[[nn.Module], Any], batch: torch.Tensor, full: bool) -> Any:
        """``run(module)`` for one batch, on the module the policy picks (and timed by it)."""
        self.steps_done += 1
        if not full:  # a last, smaller batch: no second graph for its shape
            return run(self.eager)
        if not self.key and self.state != "settled":
            self._look_up(batch)
        if self.state == "settled":
            return run(self.eager if self.compiled is None else self.compiled)
        if self.state == "compiling":
            return self._compile_and_run(run)
        kind = "eager" if self.state == "timing_eager" else "compiled"
        start = self._now()
        out = run(self.eager if kind == "eager" else self.compiled)
        self.times[kind].append(self._now() - start)
        if len(self.times[kind]) == TIMED_STEPS:
            self._timed(kind)
        return out

    def _look_up(self, batch: torch.Tensor) -> None:
        """What the book remembers of this graph; for `auto`, enough to decide at once?"""
        self.costs = self.costs or compile_cache.book()
        self.key = compile_cache.graph_key(self.eager, batch, self.amp)
        known = self.costs.recall(self.key)
        if self.choice == "auto" and "cold" in known and "compiled" in known:
            self.eager_step = known.get("eager")
            self._decide(known, self.total_steps - self.steps_done + 1)

    def _decide(self, known: dict[str, Any], steps_left: int) -> None:
        """Compile if the steps left save more than the compile is expected to cost. A step
        time not known is estimated from the other and the typical saving."""
        assert self.costs is not None
        saving = self.costs.typical()[2]
        eager = self.eager_step or known["compiled"] / (1 - saving)
        compiled = known.get("compiled", eager * (1 - saving))
        expected = self.costs.expected_compile(known)
        saved = steps_left * (eager - compiled)
        log.info("compiling saves %.1fs of the steps left, costs %.1fs", saved, expected)
        self.state = "compiling" if saved > expected else "settled"

    def _compile_and_run(self, run: Callable[[nn.Module], Any]) -> Any:
        start = self._now()
        try:
            # a long-lived worker compiles job after job: without a reset, Dynamo's code cache
            # fills up and hits its recompile limit, after which it runs eagerly
            torch._dynamo.reset()
            self.compiled = torch.compile(self.eager, dynamic=False)
            out = run(self.compiled)
        except Exception as e:  # noqa: BLE001 - any compiler failure: train on, eagerly
            log.warning("torch.compile failed (%s): training in eager mode", str(e)[:500])
            self.compiled = None
        seconds = self._now() - start
        self.compile_seconds += seconds  # a failed compile is not training either
        if self.compiled is None:
            self.state = "settled"
            return run(self.eager)
        self._remember(compile=seconds)
        self.state = "timing_compiled"
        return out

    def _timed(self, kind: str) -> None:
        median = statistics.median(self.times[kind])
        self._remember(**{kind: median})
        if kind == "eager":
            self.eager_step = median
            assert self.costs is not None
            self._decide(self.costs.recall(self.key), self.total_steps - self.steps_done)
            return
        # dropped only against eager steps of this job (a remembered one may have been timed
        # under other conditions: a teacher, another load on the host)
        if self.choice == "auto" and self.times["eager"] and median >= self.eager_step:
            log.info("compiled steps (%.3fs) are no faster than eager: eager", median)
            self.compiled = None
        self.state = "settled"

    def _remember(self, **seconds: float) -> None:
        if self.costs is not None and self.key:
            self.costs.remember(self.key, **seconds)

    def _now(self) -> float:
        if self.device.type == "cuda":  # only while timing: the first few steps of a job
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def take_seconds(self) -> float:
        """The seconds spent compiling since the last call (so, per epoch)."""
        seconds, self.compile_seconds = self.compile_seconds, 0.0
        return seconds
