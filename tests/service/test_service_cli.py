"""The command line: `lsq serve` on embedded defaults (nothing but Python), `lsq submit`,
`lsq status`, and the README's first command, `lsq serve --demo`."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import ROOT, TINY, Proc, free_port, job_folder_name, service_env, tiny_spec

pytestmark = pytest.mark.timeout(300)


def lsq(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """`lsq ARGS` with a (pseudo-)terminal for its output, as a user runs it: exit status and
    output."""
    parent, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", *args], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=child, stderr=child)  # fmt: skip
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # EIO: the program ended and its terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(parent)
    return proc.wait(30), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_serve_then_submit_and_status(tmp_path: Path) -> None:
    port = free_port()
    env = service_env(tmp_path / "data", LSQ_URL=f"http://127.0.0.1:{port}")
    serve = Proc(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 90
        while True:
            assert serve.alive(), serve.output()
            try:
                if httpx.get(f"{env['LSQ_URL']}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, serve.output()
            time.sleep(0.3)

        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump(tiny_spec("cli", training={"epochs": 2})))
        done = lsq("submit", str(spec), "--wait", env=env)
        assert done.returncode == 0, done.stdout + done.stderr + serve.output()
        assert "'cli': succeeded" in done.stdout
        table = done.stdout[done.stdout.index("epoch train_loss") :].splitlines()
        assert [row.split()[0] for row in table[1:-2]] == ["1", "2"]
        # then one line with what the job kept, and where its files are
        assert table[-2].startswith("job 1 succeeded: cli: resnet20 on synthetic, full precision")
        # the job's dashboard page; not on a terminal, without the token (a log keeps none)
        token_file = tmp_path / "data" / "token"
        assert table[-1] == (
            f"  files: {env['LSQ_URL']}/#/jobs/1 "
            f"(it asks for an API token once: this machine's, in {token_file})"
        )

        # on a terminal, an experiment's page with the token: it opens in a browser
        spec.write_text(yaml.safe_dump(EXPERIMENT))
        code, out = on_a_terminal("experiment", str(spec), "--wait", env=env)
        assert code == 0, out + serve.output()
        token = token_file.read_text().strip()
        assert f"plot and table: {env['LSQ_URL']}/#/experiments/1?token={token}\r\n" in out

        shown = lsq("status", "1", "--json", env=env)
        assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "succeeded"
        assert "succeeded" in lsq("status", "1", env=env).stdout

        spec.write_text(yaml.safe_dump(tiny_spec("bad", quantization={"weight": [0, 2]})))
        bad = lsq("submit", str(spec), env=env)
        assert bad.returncode == 2 and "quantization.weight" in bad.stderr
        missing = lsq("status", "99", env=env)
        assert missing.returncode == 2 and "job 99 does not exist" in missing.stderr
    finally:
        code = serve.stop(signal.SIGTERM)
    assert code == 0, serve.output()
    # Both children stopped with it.
    assert "Application shutdown complete" in serve.output()
    assert "worker: Warm shutdown" in serve.output()


# One variant of job 1, fine-tuned for an epoch.
EXPERIMENT = {
    "name": "cli-table",
    "base": TINY | {"training": TINY["training"] | {"epochs": 1}},
    "baseline": {"job": 1},
    "grid": {"training.lr": [0.01]},
}


def test_a_client_without_a_service_says_how_to_start_one(tmp_path: Path) -> None:
    env = service_env(tmp_path, LSQ_URL=f"http://127.0.0.1:{free_port()}")
    done = lsq("status", "1", env=env)
    assert done.returncode == 2 and "lsq serve" in done.stderr


@pytest.mark.slow
def test_the_readme_first_command_runs_a_demo_to_the_end(tmp_path: Path) -> None:
    env, port = service_env(tmp_path / "data"), free_port()
    done = lsq("serve", "--demo", "--port", str(port), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "'demo-fp32': succeeded" in out and "'demo-2bit': succeeded" in out
    # Per-epoch accuracy of both jobs; the 2-bit job started from the full-precision one.
    assert out.count("epoch train_loss train_top1 test_loss test_top1") == 2
    assert "start " in out and "drop " in out
    # It ends with what each job kept and where its files are, on this machine, then what next.
    lines = out.splitlines()
    summary = lines[lines.index("The demo's two jobs:") + 1 :]
    fp, q = summary[0:2], summary[2:4]
    # the same service again, and its dashboard: no token in the link, as not on a terminal
    assert summary[5].startswith(f"Next: `lsq serve --port {port}` keeps the service running")
    token_file = tmp_path / "data" / "token"
    assert (
        f"(the dashboard at http://127.0.0.1:{port}/ (it asks for an API token once: this "
        f"machine's, in {token_file}), the API's docs at http://127.0.0.1:{port}/docs)"
    ) in summary[5]
    assert token_file.read_text().strip() not in out
    assert fp[0].startswith("job 1 succeeded: demo-fp32: resnet20 on synthetic, full precision")
    assert "W[-2,-1,0,1] A[0,1,2,3], first/last float: test top-1" in q[0] and "drop" in q[0]
    folder = job_folder_name(tmp_path / "data", 2)
    assert q[1] == f"  files: {tmp_path / 'data' / 'artifacts' / 'jobs' / folder}"
    assert (tmp_path / "data" / "artifacts" / "jobs" / folder / "model.pt").is_file()
