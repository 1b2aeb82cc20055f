"""lsq.compiled: when the training step is compiled, and that compiling changes no result."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsq import compiled
from lsq.compiled import TIMED_STEPS, StepCompiler
from lsq.convert import quantize_model


def small_quantized() -> nn.Module:
    torch.manual_seed(0)
    float_model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    )  # fmt: skip
    model = quantize_model(float_model, [-1, 0, 1], [0, 1, 2, 3], first_last="same")
    model(torch.randn(16, 3, 8, 8))  # the activation steps' first-batch init
    return model


def loss_and_grads(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    for p in module.parameters():
        p.grad = None
    loss = F.cross_entropy(module(x), y)
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in module.parameters()]


def steps(compiler: StepCompiler, model: nn.Module, n: int, full: bool = True) -> list[nn.Module]:
    """Run n steps through the compiler; the modules it picked."""
    used = []
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(n):
        compiler.step(lambda m: used.append(m) or loss_and_grads(m, x, y), full)  # noqa: B023
    return used


def test_off_and_short_jobs_never_compile(monkeypatch) -> None:
    model = small_quantized()
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled"))
    off = StepCompiler("off", model, 10**9, torch.device("cpu"))
    assert all(m is model for m in steps(off, model, 3))
    short = StepCompiler("auto", model, 2 * TIMED_STEPS, torch.device("cpu"))
    assert all(m is model for m in steps(short, model, 2 * TIMED_STEPS))
    assert short.state == "settled" and short.compiled is None and short.take_seconds() == 0


def test_without_a_compiler_on_trains_eagerly_and_says_why(monkeypatch, caplog) -> None:
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    model = small_quantized()
    with caplog.at_level(logging.WARNING, "lsq.compiled"):
        policy = StepCompiler("on", model, 100, torch.device("cpu"))
    assert "no C++ compiler" in caplog.text
    assert all(m is model for m in steps(policy, model, 2))


def test_a_failing_compile_falls_back_to_eager(monkeypatch, caplog) -> None:
    def broken(module: nn.Module, **kwargs: object) -> nn.Module:
        raise RuntimeError("inductor: no such backend")

    monkeypatch.setattr(torch, "compile", broken)
    model = small_quantized()
    policy = StepCompiler("on", model, 100, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, "lsq.compiled"):
        used = steps(policy, model, 3)
    assert "torch.compile failed (inductor: no such backend)" in caplog.text
    assert all(m is model for m in used) and policy.state == "settled"


@pytest.mark.slow
def test_auto_compiles_a_long_job_and_the_compiled_step_gives_the_same_results(
    monkeypatch,
) -> None:
    """A real torch.compile (inductor, C++ on the CPU) of a W/A quantized network: the loss and
    every gradient, step sizes' included, equal the eager ones to float tolerance."""
    monkeypatch.setattr(compiled, "COMPILE_PAYS_AFTER", 0.0)
    model = small_quantized()
    policy = StepCompiler("auto", model, 10**6, torch.device("cpu"))
    used = steps(policy, model, TIMED_STEPS + 1)
    assert all(m is model for m in used[:TIMED_STEPS]) and used[-1] is policy.compiled
    assert policy.state == "timing_compiled" and policy.take_seconds() > 0
    # a last, smaller batch runs eagerly: no second graph for its shape
    assert steps(policy, model, 1, full=False) == [model]
    steps(policy, model, TIMED_STEPS)  # the last of these is still a timed, compiled one
    assert policy.state == "settled"  # compiled kept only if its steps were faster
    assert steps(policy, model, 1) == [model if policy.compiled is None else policy.compiled]

    torch.manual_seed(0)  # inputs that do not depend on how many steps ran before
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    compiled_module = torch.compile(model, dynamic=False)
    for want, got in zip(
        loss_and_grads(model, x, y), loss_and_grads(compiled_module, x, y), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
