"""MLflow tracking against a real `mlflow server` (SQLite backend, local artifacts) started
here: an experiment is a parent run with its jobs' runs nested under it, read back through
MLflow's own client; a server that is down costs a job a warning, not its result."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Service, embedded_service, free_port, tiny_spec
from .test_experiments import wait_experiment

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
EXPERIMENT = {
    "name": "tracked",
    "base": {
        "dataset": {"name": "synthetic", "train_size": 512, "test_size": 128},
        "model": {"arch": "resnet20"},
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.01},
        # a layer pattern's key has characters MLflow refuses in a param's name
        "quantization": {"layers": {"layer1.*": {"weight": {"bits": 4, "signed": True}}}},
    },
    "baseline": {"train": True, "training": {"epochs": 2, "lr": 0.05}},
    "grid": {"quantization.weight": [[-1, 0, 1]], "quantization.activation": [[0, 1, 2, 3]]},
}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(port), "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts")]  # fmt: skip
    log = (folder / "server.log").open("wb")
    server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (
                folder / "server.log"
            ).read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()
        shutil.rmtree(folder / "artifacts", ignore_errors=True)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Iterator[Service]:
    extra = {"LSQ_MLFLOW_TRACKING_URI": mlflow_server, "LSQ_MLFLOW_EXPERIMENT": "lsq-test"}
    with embedded_service(tmp_path_factory, "tracked", **extra) as running:
        yield running


def test_an_experiment_is_a_parent_run_with_its_jobs_nested(
    tracked: Service, mlflow_server: str
) -> None:
    experiment = tracked.http.post("/v1/experiments", json=EXPERIMENT).json()
    done = wait_experiment(tracked, experiment["id"])
    assert done["status"] == "succeeded", tracked.diagnostics()

    client = MlflowClient(mlflow_server)
    found = client.get_experiment_by_name("lsq-test")
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lsq.parent") == "true"]
    assert [p.info.run_name for p in parents] == ["tracked"]
    assert parents[0].info.status == "FINISHED"  # with its last job
    parent = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    jobs = {int(r.data.tags["lsq.job"]): r for r in children}
    job_ids = sorted(job_id for row in done["rows"] for job_id in row["jobs"])
    assert sorted(jobs) == job_ids, (sorted(jobs), done["rows"])

    variant = jobs[job_ids[-1]]
    assert variant.info.status == "FINISHED"
    assert variant.data.params["quantization.weight"] == "[-1, 0, 1]"
    assert variant.data.params["training.epochs"] == "2"
    assert variant.data.params["quantization.layers.layer1._.weight"] == str(list(range(-8, 8)))
    assert variant.data.tags["lsq.folder"] and variant.data.tags["lsq.job"] == str(job_ids[-1])
    history = client.get_metric_history(variant.info.run_id, "test_top1")
    assert [m.step for m in history] == [1, 2]
    job = tracked.job(job_ids[-1])
    assert history[-1].value == pytest.approx(job["result"]["final_top1"])
    assert variant.data.metrics["result.final_top1"] == pytest.approx(job["result"]["final_top1"])
    files = {a.path for a in client.list_artifacts(variant.info.run_id)}
    assert {"model.onnx", "plot.png", "quantizers.png"} <= files
    assert not job["warnings"]


def test_a_server_that_is_down_costs_a_warning_not_the_job(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with embedded_service(tmp_path_factory, "untracked", LSQ_MLFLOW_TRACKING_URI=down) as svc:
        started = time.monotonic()
        job = svc.wait(svc.submit(tiny_spec("untracked", training={"epochs": 1}))["id"])
        assert job["status"] == "succeeded", job["error"]
        assert time.monotonic() - started < 90
        assert any(w.startswith("MLflow: logging stopped") for w in job["warnings"]), job
