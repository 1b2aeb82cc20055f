"""The house rules a reader relies on, checked on the source: imports run one way
(api.web -> api.service -> lsq, worker -> api.service -> lsq) and every function fits on one
screen, every module in a few hundred lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What each layer's modules may import of the project's packages (itself included).
MAY_IMPORT = {
    "worker": {"worker", "api.service", "lsq"},
    "api.web": {"api.web", "api.service", "lsq"},
    "api.service": {"api.service", "lsq"},
    "lsq": {"lsq"},
}
PACKAGES = ("worker", "api.web", "api.service", "api", "lsq", "migrations")
MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 450  # past that a module holds two things: split it by what they are


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def layer_of(module: str) -> str | None:
    """The project package a dotted module name belongs to (`api` alone: its __init__)."""
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), None)


def imported_modules(path: Path, package: str) -> set[tuple[str, int]]:
    """(dotted module, line) of every import in a file of `package`, at any depth (lazy ones
    too); a relative import resolves against `package`. `from api.service import store` is
    `api.service.store`, `from api import web` is `api.web`."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name, node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else node.module or ""
            if node.level and node.module:
                base = f"{package}.{node.module}"
            found |= {(f"{base}.{alias.name}", node.lineno) for alias in node.names}
    return found


@pytest.mark.parametrize("package", list(MAY_IMPORT))
def test_imports_run_one_way(package: str) -> None:
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules(package)
        for name, line in imported_modules(path, package)
        if (layer := layer_of(name)) and layer not in MAY_IMPORT[package]
    ]
    assert not offences, f"{package} may import only {sorted(MAY_IMPORT[package])}: {offences}"


def test_the_walk_sees_lazy_relative_and_package_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    import worker.app\n    from api import web\nfrom . import a\n"
        "from api.service import store\n"
    )
    names = {layer_of(name) for name, _ in imported_modules(probe, "lsq")}
    assert names == {"worker", "api.web", "lsq", "api.service"}


def test_api_holds_only_its_two_layers() -> None:
    loose = [p.name for p in (ROOT / "api").glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"every api module is in api/service or api/web: {loose}"


@pytest.mark.parametrize("package", ["lsq", "worker", "api", "migrations"])
def test_functions_fit_on_one_screen(package: str) -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for path in modules(package)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


@pytest.mark.parametrize("package", ["lsq", "worker", "api", "migrations"])
def test_modules_stay_small(package: str) -> None:
    large = [
        f"{path.relative_to(ROOT)} ({lines})"
        for path in modules(package)
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not large, large
