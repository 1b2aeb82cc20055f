"""scripts/setup, run for real in a copy of the project whose Python makes a stand-in .venv
(its pip records what it was asked to install): a line before each slow step, then nothing on
a second run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A Python whose `-m venv DIR` makes DIR/bin/python and a DIR/bin/pip that only logs its args.
PYTHON = """#!/usr/bin/env bash
mkdir -p "$3/bin"
printf '#!/usr/bin/env bash\\n' > "$3/bin/python"
printf '#!/usr/bin/env bash\\necho "$*" >> "%s/pip.log"\\n' "$PWD" > "$3/bin/pip"
chmod +x "$3/bin/python" "$3/bin/pip"
"""
TOOLS = ("bash", "cat", "chmod", "cut", "dirname", "id", "mkdir", "sha256sum")


def test_setup_says_what_it_installs_and_nothing_when_there_is_nothing_to_do(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup", project / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    tools = tmp_path / "bin"  # no apt-get: the dataset step is skipped
    tools.mkdir()
    for tool in TOOLS:
        (tools / tool).symlink_to(shutil.which(tool))
    python = tools / "python3"
    python.write_text(PYTHON)
    python.chmod(0o755)
    env = {**os.environ, "PATH": str(tools)}

    def setup() -> subprocess.CompletedProcess:
        return subprocess.run([str(project / "scripts" / "setup")], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    first = setup()
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "scripts/setup: creating .venv",
        "scripts/setup: installing torch and torchvision (the largest part)",
        "scripts/setup: installing the project and its tools (pyproject.toml)",
    ]
    assert "torch==" in (project / "pip.log").read_text()
    second = setup()
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
