"""lsq.compiled: when the training step is compiled, and that compiling changes no result."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsq import compiled
from lsq.compile_cache import CostBook, graph_key
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


X = torch.randn(16, 3, 8, 8)


def steps(compiler: StepCompiler, model: nn.Module, n: int, full: bool = True) -> list[nn.Module]:
    """Run n steps through the compiler; the modules it picked."""
    used = []
    y = torch.randint(0, 10, (16,))
    for _ in range(n):
        compiler.step(lambda m: used.append(m) or loss_and_grads(m, X, y), X, full)  # noqa: B023
    return used


def policy(choice: str, model: nn.Module, total: int, book: CostBook) -> StepCompiler:
    return StepCompiler(choice, model, total, torch.device("cpu"), costs=book)


def test_off_and_short_jobs_never_compile(monkeypatch, tmp_path) -> None:
    model = small_quantized()
    book = CostBook(tmp_path / "costs.json")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled"))
    off = policy("off", model, 10**9, book)
    assert all(m is model for m in steps(off, model, 3))
    short = policy("auto", model, 2 * TIMED_STEPS, book)
    assert all(m is model for m in steps(short, model, 2 * TIMED_STEPS))
    assert short.state == "settled" and short.compiled is None and short.take_seconds() == 0
    # what its eager steps took is remembered for the next job of this graph
    assert 0 < book.recall(graph_key(model, X, None))["eager"] < 1


def test_auto_decides_from_the_compile_it_expects(monkeypatch, tmp_path) -> None:
    """A graph the book knows (compiled before: warm) compiles at once when its steps left
    save more than its last compile took, with no eager step timed; one it does not know is
    timed eagerly and weighed against the typical cold compile and saving."""
    model = small_quantized()
    monkeypatch.setattr(torch, "compile", lambda module, **k: nn.Identity())  # never run here
    book = CostBook(tmp_path / "costs.json")
    key = graph_key(model, X, None)
    book.remember(key, compile=40.0, eager=0.30, compiled=0.20)  # cold: 40 s
    assert book.expected_compile(book.recall(key)) == 40.0 * 0.15  # warm now: the usual share
    book.remember(key, compile=5.0)  # warm: 5 s; saves 0.1 s a step
    assert book.recall(key)["cold"] == 40.0 and book.recall(key)["compile"] == [5.0]
    assert book.typical() == pytest.approx((40.0, 5 / 40, 1 / 3))
    assert book.expected_compile(book.recall(key)) == 5.0
    warm = policy("auto", model, 60, book)
    warm._look_up(X)
    assert warm.state == "compiling" and warm.times["eager"] == []
    short = policy("auto", model, 45, book)  # 45 steps save 4.5 s, less than 5 s
    short._look_up(X)
    assert short.state == "settled"

    # compiled before with `on` only: its eager step is estimated from the typical saving
    # (1/3: 0.2 s compiled is 0.3 s eager), its compile expected warm (5 s here)
    only_on = CostBook(tmp_path / "only-on.json")
    only_on.remember(key, compile=40.0, compiled=0.20)
    only_on.remember("another graph", compile=40.0, eager=0.30, compiled=0.20)
    only_on.remember(key, compile=5.0)
    known = policy("auto", model, 60, only_on)
    known._look_up(X)
    assert known.state == "compiling" and known.eager_step is None

    other = small_quantized()[:3]  # another graph: unknown to the book
    cold = policy("auto", other, 10**6, book)
    cold._look_up(X)
    assert cold.state == "timing_eager"
    cold.eager_step = 0.3  # as if its first eager steps took 0.3 s
    cold._decide({}, 10**6)  # 1e6 steps x 0.1 s saved > a 40 s cold compile
    assert cold.state == "compiling"
    cold._decide({}, 390)  # 390 x 0.1 s = 39 s: less than the compile
    assert cold.state == "settled"


def test_the_cost_book_survives_what_it_cannot_read(tmp_path) -> None:
    path = tmp_path / "costs.json"
    path.write_text("{not json")
    book = CostBook(path)
    assert book.recall("k") == {} and book.typical() == (60.0, 0.15, 0.25)
    for i in range(1, 8):
        book.remember("k", compile=float(i))
    # the first compile (cold) is kept apart; of the later (warm) ones, the last five
    assert book.recall("k")["cold"] == 1.0 and book.recall("k")["compile"] == [3, 4, 5, 6, 7]
    book.remember("k", eager=0.4)
    book.remember("k", eager=0.2)  # averaged: one noisy measurement does not decide alone
    assert book.recall("k")["eager"] == pytest.approx(0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["costs.json", "costs.json.lock"]
    # unsound entries are dropped, not trusted (a zero would divide, a string would raise)
    path.write_text('{"a": 3, "b": {"cold": 0, "compiled": 0, "eager": "x", "compile": [1, -2]},'
                    ' "c": {"cold": 2.0, "eager": 1.0, "compiled": 0.05}}')  # fmt: skip
    assert book.recall("a") == {} and book.recall("b") == {}
    assert book.typical() == (2.0, 0.15, 0.9)  # a saving of 95% is trusted up to 90%
    (tmp_path / "a-file").touch()
    nowhere = CostBook(tmp_path / "a-file" / "costs.json")  # cannot be written: no error
    nowhere.remember("k", compile=1.0)
    assert nowhere.recall("k") == {}


def test_without_a_compiler_on_trains_eagerly_and_says_why(monkeypatch, caplog, tmp_path) -> None:
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    model = small_quantized()
    with caplog.at_level(logging.WARNING, "lsq.compiled"):
        on = policy("on", model, 100, CostBook(tmp_path / "costs.json"))
    assert "no C++ compiler" in caplog.text
    assert all(m is model for m in steps(on, model, 2))


def test_a_failing_compile_falls_back_to_eager(monkeypatch, caplog, tmp_path) -> None:
    def broken(module: nn.Module, **kwargs: object) -> nn.Module:
        raise RuntimeError("inductor: no such backend")

    monkeypatch.setattr(torch, "compile", broken)
    model = small_quantized()
    on = policy("on", model, 100, CostBook(tmp_path / "costs.json"))
    with caplog.at_level(logging.WARNING, "lsq.compiled"):
        used = steps(on, model, 3)
    assert "torch.compile failed (inductor: no such backend)" in caplog.text
    assert all(m is model for m in used) and on.state == "settled"
    assert "compile" not in on.costs.recall(on.key)  # a failed compile is not remembered


@pytest.mark.slow
def test_auto_compiles_a_long_job_and_the_compiled_step_gives_the_same_results(
    tmp_path,
) -> None:
    """A real torch.compile (inductor, C++ on the CPU) of a W/A quantized network: the loss and
    every gradient, step sizes' included, equal the eager ones to float tolerance."""
    model = small_quantized()
    book = CostBook(tmp_path / "costs.json")
    auto = policy("auto", model, 10**9, book)
    used = steps(auto, model, TIMED_STEPS + 1)
    assert all(m is model for m in used[:TIMED_STEPS]) and used[-1] is auto.compiled
    assert auto.state == "timing_compiled" and auto.take_seconds() > 0
    # a last, smaller batch runs eagerly: no second graph for its shape
    assert steps(auto, model, 1, full=False) == [model]
    steps(auto, model, TIMED_STEPS)  # the last of these is still a timed, compiled one
    assert auto.state == "settled"  # compiled kept only if its steps were faster
    assert steps(auto, model, 1) == [model if auto.compiled is None else auto.compiled]
    known = book.recall(auto.key)
    assert known["cold"] > 0 and known["eager"] > 0 and known["compiled"] > 0

    torch.manual_seed(0)  # inputs that do not depend on how many steps ran before
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    compiled_module = torch.compile(model, dynamic=False)
    for want, got in zip(
        loss_and_grads(model, x, y), loss_and_grads(compiled_module, x, y), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
