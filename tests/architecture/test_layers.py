"""The house rules a reader relies on, checked on the source: imports run one way
(worker -> api -> lsq) and functions in lsq/ and worker/ fit on one screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each package may import only the packages after it in this order.
LAYERS = ("worker", "api", "lsq")
MAX_FUNCTION_LINES = 50


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_packages(path: Path, package: str) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in a file of `package`, at any depth (lazy
    ones too); a relative import is of `package` itself."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            name = package if node.level else (node.module or "").split(".")[0]
            found.add((name, node.lineno))
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_imports_run_one_way(package: str) -> None:
    upward = set(LAYERS[: LAYERS.index(package)])
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules(package)
        for name, line in imported_packages(path, package)
        if name in upward
    ]
    assert not offences, f"{package} may import only {LAYERS[LAYERS.index(package) + 1 :]}"


def test_the_walk_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import worker.app\n    from api import db\nfrom . import a\n")
    assert {name for name, _ in imported_packages(probe, "lsq")} == {"worker", "api", "lsq"}


@pytest.mark.parametrize("package", ["lsq", "worker"])
def test_functions_fit_on_one_screen(package: str) -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for path in modules(package)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long
