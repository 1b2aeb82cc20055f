"""`lsq run` as a user runs it: a real process, killed with SIGKILL mid-run, then resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

SPEC = {
    "name": "cli-quick",
    "dataset": {"name": "synthetic", "train_size": 1024, "test_size": 256},
    "model": {"arch": "resnet20"},
    "training": {"epochs": 3, "batch_size": 64, "lr": 0.05},
}


def lsq(*args, cwd):
    return [sys.executable, "-m", "lsq", *map(str, args)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_killed_with_sigkill_resumes_to_the_end(tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        lsq("run", "spec.yaml", "--out", "run", cwd=tmp_path), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    metrics = out / "metrics.json"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and json.loads(metrics.read_text())["epochs"]):
        assert proc.poll() is None, "lsq run ended before its first epoch"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(metrics.read_text())
    assert done["result"] is None and 1 <= len(done["epochs"]) < 3

    resumed = subprocess.run(
        lsq("run", "--resume", "run", cwd=tmp_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(metrics.read_text())
    assert [e["epoch"] for e in final["epochs"]] == [1, 2, 3]
    assert final["epochs"][: len(done["epochs"])] == done["epochs"]  # kept, not retrained
    assert final["result"]["final_top1"] > 30
    # a line per epoch it ran, then one line with the result, one on the classes, then where
    # the files are
    lines = resumed.stdout.splitlines()
    assert any(line.split()[:1] == ["3"] for line in lines)
    top1 = final["result"]["final_top1"]
    assert lines[-3] == f"cli-quick: resnet20 on synthetic, full precision: test top-1 {top1:.2f}%"
    worst = min(t for t in final["result"]["per_class"]["top1"])
    assert lines[-2].startswith("worst classes: ") and f" {worst:.2f}%" in lines[-2].split(",")[0]
    assert lines[-1].startswith("files in run/: checkpoint.pt, metrics.json, model.pt, plot.png")
    assert {p.name for p in out.iterdir()} >= {"spec.yaml", "checkpoint.pt", "model.pt"}


def test_bad_spec_is_reported_with_the_field(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**SPEC, "quantization": {"weight": [0, 2]}}))
    r = subprocess.run(lsq("run", "bad.yaml", cwd=tmp_path), cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "quantization.weight: [0, 2] is not contiguous" in r.stderr
    assert "Traceback" not in r.stderr and "https://" not in r.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ndataset:\n\tname: synthetic\n", "not valid YAML at line 3, column 1"),
        (
            yaml.safe_dump({**SPEC, "training": {"epocs": 3}}),
            "training.epocs: unknown key 'epocs'; did you mean 'epochs'? accepted: epochs,",
        ),
        (  # inside a per-layer override: past the layer's pattern, a dict key
            yaml.safe_dump({**SPEC, "quantization": {"layers": {"fc": {"wieght": [-1, 0, 1]}}}}),
            "quantization.layers.fc.wieght: unknown key 'wieght'; did you mean 'weight'?",
        ),
        (
            yaml.safe_dump({**SPEC, "model": {"arch": "resnet21"}}),
            "model.arch: 'resnet21' is no network",
        ),
        ("", "bad.yaml is empty; a spec is a mapping"),
        ("name: !!binary aGVsbG8=\n", "constructor for the tag 'tag:yaml.org,2002:binary'"),
    ],
)
def test_spec_mistakes_are_explained_without_a_traceback(tmp_path, text, expected):
    (tmp_path / "bad.yaml").write_text(text)
    r = subprocess.run(lsq("run", "bad.yaml", cwd=tmp_path), cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "https://" not in r.stderr
