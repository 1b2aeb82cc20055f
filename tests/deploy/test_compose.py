"""The container deployment, checked without a Docker engine: docker-compose validates the compose
file offline, and the YAML, .env.example and the Dockerfile are read for what docs/deploying/
promises.

docker-compose (v1, Debian's package) must be installed: scripts/services installs it. Without it
these tests fail; they never skip, so CI cannot pass without validating the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
ARTIFACTS = "/var/lib/lsq/artifacts"
# ${VAR}, ${VAR:-default}, ${VAR-default}; $${...} is an escaped dollar, not a variable.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {name.strip(): value.strip() for name, value in pairs}


def docker_compose(tmp_path: Path, *args: str, env_file: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: run scripts/services (it installs it)")
    # Only the given env file: neither the caller's environment nor a local .env may leak in.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    return subprocess.run(
        [
            exe,
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE),
            *args,
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    "profiles",
    [(), ("cpu",), ("cpu", "monitoring", "prometheus")],
    ids=["gpu", "cpu", "cpu+monitoring+prometheus"],
)
@pytest.mark.parametrize("env_name", ["defaults", ".env.example"])
def test_docker_compose_validates_the_file(
    tmp_path: Path, profiles: tuple[str, ...], env_name: str
) -> None:
    env_file = ENV_EXAMPLE
    if env_name == "defaults":
        env_file = tmp_path / "empty.env"
        env_file.touch()
    args = [arg for p in profiles for arg in ("--profile", p)]
    done = docker_compose(tmp_path, *args, env_file=env_file)
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    # A variable without a default would be interpolated as "" with only a warning.
    assert "is not set" not in done.stderr, done.stderr


def test_services_and_profiles(services: dict[str, Any]) -> None:
    assert {"postgres", "redis", "api", "worker", "worker-cpu", "flower"} <= services.keys()
    for name in ("postgres", "redis", "api", "worker"):
        assert "profiles" not in services[name], f"{name} must start with a plain `up`"
    assert services["flower"]["profiles"] == ["monitoring"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]


def test_worker_reserves_gpus_and_cpu_worker_does_not(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "deploy" not in services["worker-cpu"]
    # The CPU worker is the same worker otherwise.
    for key in ("image", "environment", "volumes", "stop_grace_period", "depends_on"):
        assert services["worker-cpu"][key] == services["worker"][key], key
    assert (
        services["worker"]["command"][:2]
        == services["worker-cpu"]["command"][:2]
        == ["lsq", "worker"]
    )


def test_healthchecks_and_dependencies(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    for name in ("api", "worker", "worker-cpu"):
        depends = services[name]["depends_on"]
        assert depends == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_api_migrates_before_serving_on_port_8000(services: dict[str, Any]) -> None:
    command = " ".join(services["api"]["command"])
    assert command.index("lsq db upgrade") < command.index("lsq api")
    assert "--port 8000" in command
    assert any(str(p).endswith(":8000") for p in services["api"]["ports"])


def test_redis_is_configured_as_a_queue(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read_only), from the short volume syntax."""
    result = {}
    for volume in service.get("volumes", []):
        read_only = volume.endswith(":ro")
        volume = volume.removesuffix(":ro").removesuffix(":rw")
        source, target = volume.rsplit(":", 1)  # the source may hold ${VAR:-default}
        result[target] = (source, read_only)
    return result


def test_volumes(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named = compose["volumes"].keys()
    assert {"postgres-data", "redis-data", "artifacts"} <= named
    assert mounts(services["postgres"])["/var/lib/postgresql/data"] == ("postgres-data", False)
    assert mounts(services["redis"])["/data"] == ("redis-data", False)
    # The API serves what the workers write: one volume, one path, one setting.
    for name in ("api", "worker", "worker-cpu"):
        assert mounts(services[name])[ARTIFACTS] == ("artifacts", False), name
        assert services[name]["environment"]["LSQ_ARTIFACTS_DIR"] == ARTIFACTS, name
    for name in ("worker", "worker-cpu"):
        source, read_only = mounts(services[name])["/data"]
        assert "LSQ_DATASETS_DIR" in source and read_only, name


def test_workers_stop_gracefully(services: dict[str, Any]) -> None:
    for name in ("worker", "worker-cpu"):
        assert services[name]["stop_grace_period"], name
        assert services[name]["init"] is True, name  # SIGTERM reaches the worker


def test_every_variable_is_documented_with_its_default() -> None:
    documented = env_example()
    used: dict[str, set[str]] = {}
    for name, default in VARIABLE.findall(COMPOSE.read_text()):
        used.setdefault(name, set()).add(default)
    assert sorted(used.keys() - documented.keys()) == [], "used but not in .env.example"
    assert sorted(documented.keys() - used.keys()) == [], "in .env.example but never used"
    for name, defaults in used.items():
        assert defaults == {documented[name]}, f"{name}: compose {defaults}, .env.example"


def test_service_settings_keep_the_service_defaults() -> None:
    """The compose defaults of api/service/config.py's settings are that file's defaults."""
    settings = {f.alias: f.default for f in Settings.model_fields.values() if f.alias}
    documented = env_example()
    passed = [name for name in documented if name in settings]
    assert {"LSQ_QUEUE", "LSQ_LEASE_SECONDS", "LSQ_VISIBILITY_TIMEOUT"} <= set(passed)
    for name in passed:
        default = settings[name]
        value = documented[name]
        assert (float(value) == default) if isinstance(default, int | float) else value == default


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), per stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_dockerfile() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    for stage in stages:
        assert re.match(r"python:3\.11[-.]", stage[0][1]), stage[0]
    runtime = stages[-1]
    assert any(i == "COPY" and "--from=" in a for i, a in runtime), "the venv from the builder"
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert not any(re.search(r"\b(gcc|g\+\+|build-essential)\b", a) for _, a in runtime)


def test_dockerfile_pins_the_torch_of_pyproject() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"torch(vision)?==", d)]
    assert sorted(pins) == ["torch==2.14.1", "torchvision==0.29.1"]
    dockerfile = DOCKERFILE.read_text()
    for pin in pins:
        assert re.search(rf"(?<![\w.-]){re.escape(pin)}(?![\w.])", dockerfile), pin


def test_dockerignore_allows_only_what_the_dockerfile_copies() -> None:
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in patterns, "an allowlist keeps .venv, .git and .env out of the build context"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        src.rstrip("/")
        for stage in dockerfile_stages()
        for i, a in stage
        if i == "COPY" and "--from=" not in a
        for src in a.split()[:-1]
    }
    assert copied and copied <= allowed


def test_the_commands_compose_runs_exist() -> None:
    """compose runs `lsq api`, `lsq worker` and `lsq db upgrade`: the console script has them."""
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["lsq"]
    module, function = script.split(":")
    main = getattr(__import__(module, fromlist=[function]), function)
    for command in (["api"], ["worker"], ["db", "upgrade"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0, f"`lsq {' '.join(command)}` is not a command of {script}"


def test_the_api_believes_no_proxy_unless_told(services: dict[str, Any]) -> None:
    """No X-Forwarded-For is believed by default (uvicorn's own default believes the loopback's):
    a forged address would escape the per-address limits and land in the access log."""
    environment = services["api"]["environment"]
    assert environment["FORWARDED_ALLOW_IPS"] == "${FORWARDED_ALLOW_IPS:-}"
    assert env_example()["FORWARDED_ALLOW_IPS"] == ""
    assert Settings.model_fields["forwarded_allow_ips"].default == ""
