"""The docker-compose topology without Docker: the compose file's own environment and commands,
one API and two workers against PostgreSQL and a Redis configured as compose configures it.
Several jobs at once: both workers take jobs, no job runs twice, every job ends with all epochs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from .conftest import ROOT, SERVICE_ENV, Proc, bearer, free_port, make_token, tiny_spec

JOBS = 4
REDIS_PASSWORD = "topology-secret"


def compose_config(env: dict[str, str], tmp_path: Path) -> dict:
    """`docker-compose config`: the file resolved with these variables, as compose runs it."""
    if not shutil.which("docker-compose"):
        pytest.fail("docker-compose is missing: run scripts/services (CI installs it)")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = subprocess.run(
        ["docker-compose", "--env-file", str(empty), "-f", "docker-compose.yml", "config"],
        cwd=ROOT, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return yaml.safe_load(out.stdout)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_one_api_and_two_workers_from_the_compose_environment(new_pg_database, tmp_path):
    db = make_url(new_pg_database())
    redis_port, api_port = free_port(), free_port()
    variables = {
        "POSTGRES_USER": db.username,
        "POSTGRES_PASSWORD": db.password or "postgres",  # trust auth ignores it
        "POSTGRES_DB": db.database,
        "POSTGRES_ADDRESS": f"127.0.0.1:{db.port or 5432}",
        "REDIS_PASSWORD": REDIS_PASSWORD,
        "REDIS_ADDRESS": f"127.0.0.1:{redis_port}",
        "LSQ_QUEUE": f"lsq-topology-{api_port}",
    }
    services = compose_config(variables, tmp_path)["services"]
    artifacts = tmp_path / "artifacts"  # the compose file's shared artifacts volume

    def env_of(service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
        env.pop("OMP_NUM_THREADS", None)  # the workers split the cores themselves
        env |= {k: str(v) for k, v in services[service]["environment"].items()}
        assert env["LSQ_ARTIFACTS_DIR"] == "/var/lib/lsq/artifacts"  # the volume's mount point
        env |= {"LSQ_DATA_DIR": str(tmp_path / service), "LSQ_ARTIFACTS_DIR": str(artifacts)}
        # `lsq` is the console script of this venv; two workers share this host's cores
        return env | {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
                      "LSQ_WORKERS_PER_HOST": "2"}  # fmt: skip

    processes: list[Proc] = []
    try:
        redis_cmd = services["redis"]["command"]
        assert redis_cmd[:1] == ["redis-server"] and REDIS_PASSWORD in redis_cmd
        redis_args = [*redis_cmd, "--port", str(redis_port), "--bind", "127.0.0.1",
                      "--dir", str(tmp_path)]  # fmt: skip
        processes.append(Proc(redis_args, dict(os.environ), tmp_path / "redis.log", program=()))
        api_cmd = services["api"]["command"]  # sh -c "lsq db upgrade && exec lsq api ... 8000"
        assert api_cmd[:2] == ["sh", "-c"] and "lsq db upgrade" in api_cmd[2]
        api_cmd = [*api_cmd[:2], re.sub(r"--port \d+", f"--port {api_port}", api_cmd[2])]
        processes.append(Proc(api_cmd, env_of("api"), tmp_path / "api.log", program=()))
        worker_cmd = services["worker"]["command"]
        assert worker_cmd[:2] == ["lsq", "worker"]
        workers = [Proc(worker_cmd, env_of("worker"), tmp_path / f"worker{i}.log", program=())
                   for i in (1, 2)]  # fmt: skip
        processes += workers

        http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)
        deadline = time.monotonic() + 120
        while True:
            for p in processes:
                assert p.alive(), f"{p.log.name} exited:\n{p.output()[-3000:]}"
            try:
                ready = http.get("/readyz").status_code == 200
            except httpx.TransportError:
                ready = False
            if ready and all("ready" in w.output() for w in workers):
                break
            assert time.monotonic() < deadline, "\n".join(p.output()[-2000:] for p in processes)
            time.sleep(0.3)

        http.headers.update(bearer(make_token(env_of("api"))))
        spec = tiny_spec("topology", training={"epochs": 2})
        ids = [http.post("/v1/jobs", json={**spec, "name": f"topology-{i}"}).json()["id"]
               for i in range(JOBS)]  # fmt: skip
        deadline = time.monotonic() + 300
        while True:
            jobs = [http.get(f"/v1/jobs/{i}").json() for i in ids]
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
                break
            assert time.monotonic() < deadline, "\n".join(p.output()[-2000:] for p in processes)
            time.sleep(0.5)

        for job in jobs:
            assert job["status"] == "succeeded", job["error"]
            assert [e["epoch"] for e in job["epochs"]] == [1, 2]
            assert job["attempts"] == 1
        assert len({job["worker"] for job in jobs}) == 2, "both workers take jobs"
        threads = max(1, len(os.sched_getaffinity(0)) // 2)  # each its share of the cores
        for w in workers:
            assert f"lsq worker: {threads} torch threads" in w.output()
        # no job ran twice: each job's start is logged once, by one of the two workers
        starts = [m for w in workers for m in re.findall(r"job (\d+): attempt", w.output())]
        assert sorted(map(int, starts)) == sorted(ids)
        for job in jobs:  # the API serves what the workers wrote to the shared folder
            names = {a["name"] for a in http.get(f"/v1/jobs/{job['id']}/artifacts").json()}
            assert "model.pt" in names
    finally:
        for p in reversed(processes):
            p.stop()
