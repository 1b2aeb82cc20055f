"""A deployment's own network: the example package (examples/plugin-network) installed with
pip registers `example_cnn` in the `lsq.networks` entry-point group, and `lsq run` trains it,
quantized, from the example spec. A request never names code: only installed entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lsq import archs
from lsq.spec import JobSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fashion-mnist-plugin-network.yaml"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package, installed by pip into a folder of its own (not the venv)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(ROOT / "examples" / "plugin-network")],
        check=True, capture_output=True,
    )  # fmt: skip
    return target


def test_an_entry_point_network_is_an_arch_only_where_it_is_installed(installed, monkeypatch):
    assert archs.unknown("example_cnn")  # not here yet
    monkeypatch.syspath_prepend(str(installed))
    archs.plugins.cache_clear()
    try:
        assert archs.unknown("example_cnn") is None
        spec = JobSpec.from_file(EXAMPLE)
        assert spec.model.arch == "example_cnn"
        assert archs.layer_names("example_cnn") is None  # known once built
    finally:
        monkeypatch.undo()
        archs.plugins.cache_clear()


def test_lsq_run_trains_the_plugin_network_quantized(installed, tmp_path):
    spec = yaml.safe_load(EXAMPLE.read_text()) | {"name": "plugin"}
    spec["dataset"] |= {"train_size": 1000, "test_size": 300}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = os.environ | {"PYTHONPATH": f"{installed}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", "lsq", "run", str(tmp_path / "spec.yaml"), "--out",
         str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())["result"]
    assert result["final_top1"] > 30  # ten classes: chance is 10
    bad = spec | {"quantization": spec["quantization"] | {"layers": {"nope.*": {"weight": None}}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    failed = subprocess.run(
        [sys.executable, "-m", "lsq", "run", str(tmp_path / "bad.yaml"), "--out",
         str(tmp_path / "bad")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert failed.returncode != 0
    assert "'nope.*' is the first pattern to match no layer of example_cnn" in failed.stderr
