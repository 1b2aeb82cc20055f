"""lsq.compile_cache: processes that share a compile cache, compiling one graph at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One training step of a small W/A quantized network, compiled (`on`) in a process whose cache
# root is LSQ_COMPILE_CACHE_DIR; prints its loss, the eager loss and torch's cache counters.
STEP = """
import json, torch
from torch import nn
from torch._dynamo.utils import counters
from lsq.compiled import StepCompiler
from lsq.convert import quantize_model

torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
)
model = quantize_model(net, [-1, 0, 1], [0, 1, 2, 3], first_last="same")
x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
model(x)  # the activation steps' first-batch init
eager = nn.functional.cross_entropy(model(x), y).item()
def step(m):
    loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()  # the backward graph compiles (and is cached) at the first backward
    return loss.item()

on = StepCompiler("on", model, 10, torch.device("cpu"))
loss = on.step(step, x, True)
hits = {k: dict(v) for k, v in counters.items() if k in ("aot_autograd", "inductor")}
print(json.dumps({"loss": loss, "eager": eager, "counters": hits, "key": on.key}))
"""


def compile_in(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "LSQ_COMPILE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", STEP], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_processes_compiling_one_graph_at_once_leave_a_cache_the_next_one_hits(
    tmp_path: Path,
) -> None:
    """Both compile (neither waits for the other) and both train right; the entries each
    renamed into place make a whole cache: a third process loads the graph from it."""
    first, second = compile_in(tmp_path), compile_in(tmp_path)
    runs = [result(first), result(second)]
    for run in runs:
        assert run["loss"] == pytest.approx(run["eager"], rel=1e-5)
        assert run["counters"]["inductor"].get("fxgraph_cache_miss", 0) >= 1
    assert runs[0]["key"] == runs[1]["key"]
    third = result(compile_in(tmp_path))
    assert third["loss"] == pytest.approx(runs[0]["loss"], rel=1e-6)
    assert third["counters"]["aot_autograd"].get("autograd_cache_hit") == 1
    assert "fxgraph_cache_miss" not in third["counters"]["inductor"]
    (folder,) = tmp_path.iterdir()  # named after torch and our code
    assert folder.name.startswith("torch-") and "-lsq-" in folder.name
    book = json.loads((folder / "costs.json").read_text())
    entry = book[third["key"]]
    assert entry["cold"] > 0 and len(entry["compile"]) == 2  # no compile's record lost
