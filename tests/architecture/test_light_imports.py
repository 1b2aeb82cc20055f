"""What importing a piece of lsq drags in, checked in a fresh interpreter: the quantizer and the
layers stand without the job contract (pydantic, yaml, lsq.spec), the level sets and the text
helpers are plain Python, and the contract itself never loads torch (the API validates specs
without it), nor does the CLI until a command needs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def loaded_by(*modules: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `modules`."""
    code = f"import sys, {', '.join(modules)}; print(' '.join(sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (("lsq.quantizer", "lsq.layers"), {"pydantic", "yaml", "lsq.spec"}),
        (("lsq.levels", "lsq.text"), {"torch", "pydantic", "yaml", "lsq.spec"}),
        (("lsq.spec",), {"torch"}),
        (("lsq.archs", "lsq.cost"), {"torch"}),  # the API's checks and estimates
        (("api.service.datasets",), {"torch", "PIL"}),  # the API lists image folders
        (("worker.cli", "lsq.cli"), {"torch"}),  # `lsq --help`, `lsq submit`: no torch to load
    ],
)
def test_a_module_loads_only_what_it_needs(modules: tuple[str, ...], forbidden: set[str]) -> None:
    loaded = loaded_by(*modules)
    assert modules[0] in loaded  # the probe imported what it says
    assert not forbidden & loaded, f"{modules} import {sorted(forbidden & loaded)}"
