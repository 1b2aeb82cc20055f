"""End to end through HTTP: a real API process and a real worker process, once on SQLite with
the embedded broker and once on PostgreSQL with Redis (the `service` fixture)."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import pytest
import torch

from api.service.config import Settings
from api.service.queue import RUN_JOB
from api.web.schemas import public_worker
from lsq.export import load_integer, read_integer
from worker.app import make_celery

from .conftest import Service, tiny_spec
from .test_reliability_jobs import worker_of

pytestmark = pytest.mark.timeout(300)
CHANCE = 10.0  # percent, 10 classes


def job_count(service: Service) -> int:
    return len(service.http.get("/v1/jobs", params={"limit": 200}).json()["items"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"quantization": {"weight": [-2, 0, 1]}}, "quantization.weight"),  # not contiguous
        ({"model": {"arch": "vgg"}}, "model.arch"),
        ({"dataset": {"name": "mnist"}}, "dataset.name"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"colour": "blue"}, "colour"),  # unknown key
        ({"training": {"epochs": 2, "learning_rate": 0.1}}, "training.learning_rate"),
        ({"model": {"init": {"job": 999999}}}, "model.init.job"),  # no such job
        ({"model": {"init": {"job": 0}}}, "model.init.job"),  # not an id
        ({"model": {"init": 5}}, "model.init"),  # neither a path nor {job: ID}
        (
            {"quantization": {"weight": [-1, 0, 1], "layers": {"layer9.*": {}}}},
            "quantization.layers",
        ),
        ({"training": {"distill": {"teacher": "/etc/passwd"}}}, "training.distill.teacher"),
        ({"training": {"distill": {"teacher": {"job": 999999}}}}, "training.distill.teacher.job"),
    ],
)
def test_a_bad_spec_gets_422_naming_the_field_and_creates_no_job(
    service: Service, change: dict, field: str
) -> None:
    before = job_count(service)
    response = service.http.post("/v1/jobs", json=tiny_spec("bad", **change))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert [f["field"] for f in error["fields"]] == [field], error  # one error, named plainly
    assert job_count(service) == before


def test_errors_share_one_shape(service: Service) -> None:
    for method, path, status in [
        ("GET", "/v1/jobs/999999", 404),
        ("GET", "/v1/jobs/999999/epochs", 404),
        ("POST", "/v1/jobs/999999/cancel", 404),
        ("GET", "/v1/jobs/999999/artifacts", 404),
        ("GET", "/v1/nothing-here", 404),
        ("GET", "/v1/jobs?limit=0", 422),
        ("GET", "/v1/jobs?status=sleeping", 422),
        ("GET", "/v1/jobs?cursor=abc", 422),
        ("GET", "/v1/jobs?cursor=99999999999999999999", 422),
        ("GET", "/v1/jobs/99999999999999999999", 404),
        ("POST", "/v1/jobs", 422),  # no body
    ]:
        response = service.http.request(method, path)
        assert response.status_code == status, (path, response.text)
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
        assert body["error"]["message"]


def test_a_job_runs_to_success_and_a_quantized_job_starts_from_it(
    service: Service, tmp_path: Path
) -> None:
    fp = service.submit(tiny_spec("fp32"))
    assert fp["status"] == "queued" and fp["links"]["self"] == f"/v1/jobs/{fp['id']}"
    # The quantized job is submitted at once; it starts from the first one's final model.
    q = service.submit(
        tiny_spec(
            "2bit",
            model={"init": {"job": fp["id"]}},
            quantization={
                "weight": [-2, -1, 0, 1],
                "activation": [0, 1, 2, 3],
                "layers": {"layer1.0.*": {"weight": [-1, 0, 1]}},  # mixed precision
            },
            training={"epochs": 2, "lr": 0.01},
        )
    )

    fp = service.wait(fp["id"])
    assert fp["status"] == "succeeded", fp["error"]
    assert [e["epoch"] for e in fp["epochs"]] == [1, 2, 3]
    assert fp["epochs"] == service.http.get(f"/v1/jobs/{fp['id']}/epochs").json()
    assert fp["result"]["final_top1"] == fp["epochs"][-1]["test_top1"] > 2 * CHANCE
    assert fp["attempts"] == 1 and fp["progress"]["epoch"] == 3
    times = [datetime.fromisoformat(fp[k]) for k in ("created_at", "started_at", "finished_at")]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    # The job ran inside the worker process itself (solo pool): nothing forked after torch.
    # Clients see the worker's name as a digest; its log has the name, with its pid.
    name = worker_of(service, fp["id"])
    assert name.split(":")[1] == str(service.worker.pid) and fp["worker"] == public_worker(name)

    q = service.wait(q["id"])
    assert q["status"] == "succeeded", q["error"]
    assert [e["epoch"] for e in q["epochs"]] == [1, 2]
    # It really started from the first job's weights: same accuracy before quantizing.
    assert q["result"]["init_top1"] == pytest.approx(fp["result"]["final_top1"], abs=0.01)
    assert q["result"]["final_top1"] > 2 * CHANCE

    listed = service.http.get(f"/v1/jobs/{q['id']}/artifacts").json()
    names = {a["name"] for a in listed}
    assert {"checkpoint.pt", "model-int.pt", "model.onnx", "model.pt", "metrics.json"} <= names
    for artifact in listed:
        response = service.http.get(artifact["url"])
        assert response.status_code == 200 and len(response.content) == artifact["size"]
        (tmp_path / artifact["name"]).write_bytes(response.content)
    model, spec = load_integer(tmp_path / "model-int.pt")
    assert spec.name == "2bit" and spec.quantization.weight.levels == [-2, -1, 0, 1]
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    layers = read_integer(tmp_path / "model-int.pt")["layers"]
    assert layers["layer1.0.conv1"]["weight_levels"] == [-1, 1]
    assert layers["layer1.1.conv1"]["weight_levels"] == [-2, 1]
    onnx_model = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        predicted = model(x).argmax(1).tolist()
    assert onnx_model.run(["logits"], {"images": x.numpy()})[0].argmax(1).tolist() == predicted
    assert q["result"]["compression"] > 10
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epochs"][-1]["epoch"] == 2
    assert service.http.get(f"/v1/jobs/{q['id']}/artifacts/spec.txt").status_code == 404
    assert service.http.get(f"/v1/jobs/{q['id']}/artifacts/..%2Flsq.db").status_code == 404


def test_a_torchvision_network_runs_quantized_over_http(service: Service, tmp_path: Path) -> None:
    """MobileNetV2 by name, ternary weights and 2-bit inputs: its linear bottlenecks' inputs are
    measured signed, and the run ends with its quantizer health and an ONNX graph."""
    layers = {"layer1.*": {"weight": None}}  # a ResNet's names
    bad = tiny_spec("bad", model={"arch": "mobilenet_v2"}, quantization={"layers": layers})
    refused = service.http.post("/v1/jobs", json=bad)
    assert refused.status_code == 422 and "features.0.0, features.1.conv.0.0" in refused.text
    job = service.submit(tiny_spec(
        "mobilenet", model={"arch": "mobilenet_v2"}, training={"epochs": 1, "lr": 0.001},
        quantization={"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]},
    ))  # fmt: skip
    job = service.wait(job["id"])
    assert job["status"] == "succeeded", job["error"]
    health = service.http.get(f"/v1/jobs/{job['id']}/quantizers").json()[-1]["quantizers"]
    signed = {h["layer"] for h in health if h["kind"] == "activation" and h["signed"]}
    assert "features.2.conv.0.0" in signed and "features.2.conv.1.0" not in signed
    names = {a["name"] for a in service.http.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    assert {"model.onnx", "model-int.pt", "quantizers.png"} <= names
    onnx = service.http.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx").content
    (tmp_path / "model.onnx").write_bytes(onnx)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    assert session.run(["logits"], {"images": torch.randn(2, 3, 16, 16).numpy()})[0].shape == (
        2,
        10,
    )


def test_a_missing_dataset_fails_the_job_and_the_worker_runs_the_next(service: Service) -> None:
    missing = f"{service.env['LSQ_DATA_ROOTS']}/nowhere/cifar-10-batches-py"
    bad = service.submit(tiny_spec("no-data", dataset={"name": "cifar10", "root": missing}))
    good = service.submit(tiny_spec("after", training={"epochs": 1}))
    bad = service.wait(bad["id"])
    assert bad["status"] == "failed"
    assert missing in bad["error"] and "does not exist" in bad["error"]
    assert bad["epochs"] == [] and bad["result"] is None
    good = service.wait(good["id"])
    assert good["status"] == "succeeded", good["error"]
    assert good["worker"] == bad["worker"]  # the same worker process went on


def test_a_data_parallel_job_runs_through_the_worker(service: Service) -> None:
    # training.devices: 2 on the CPU: the worker process is rank 0 and spawns rank 1 (gloo)
    job = service.submit(tiny_spec("ddp", training={"epochs": 1, "devices": 2}))
    job = service.wait(job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert [e["epoch"] for e in job["epochs"]] == [1] and job["attempts"] == 1
    # accuracy against one process is the core's test (tests/core/test_distributed.py); here:
    # the spawned rank ran inside a Celery worker and rank 0 recorded the epoch
    assert 0 < job["epochs"][0]["test_top1"] <= 100 and job["result"]["final_top1"] is not None


@pytest.mark.slow
def test_cancel_a_queued_job_and_a_running_job(service: Service) -> None:
    long = service.submit(tiny_spec("long", training={"epochs": 500}))
    queued = service.submit(tiny_spec("never-runs", training={"epochs": 1}))
    long = service.wait(long["id"], until=lambda job: len(job["epochs"]) >= 1)
    assert long["status"] == "running"

    response = service.http.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    response = service.http.post(f"/v1/jobs/{long['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True

    long = service.wait(long["id"])
    assert long["status"] == "cancelled" and long["error"] is None
    kept = [e["epoch"] for e in long["epochs"]]
    assert kept and kept == list(range(1, len(kept) + 1)) and len(kept) < 500
    assert service.http.post(f"/v1/jobs/{long['id']}/cancel").status_code == 200  # idempotent

    # Jobs are taken in order: once `after` is done, the cancelled job's message was consumed.
    after = service.wait(service.submit(tiny_spec("after-cancel", training={"epochs": 1}))["id"])
    assert after["status"] == "succeeded"
    queued = service.job(queued["id"])
    assert queued["status"] == "cancelled" and queued["attempts"] == 0
    assert queued["started_at"] is None and queued["epochs"] == []
    response = service.http.post(f"/v1/jobs/{after['id']}/cancel")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


def test_the_same_message_delivered_twice_runs_the_job_once(service: Service) -> None:
    job = service.submit(tiny_spec("twice", training={"epochs": 2}))
    # A second copy of the message, as a broker redelivery would make.
    copy = make_celery(Settings.model_validate(service.env)).send_task(RUN_JOB, args=[job["id"]])

    job = service.wait(job["id"])
    assert job["status"] == "succeeded", job["error"]
    after = service.wait(service.submit(tiny_spec("next", training={"epochs": 1}))["id"])
    assert after["status"] == "succeeded"  # both copies were consumed before this one

    again = service.job(job["id"])
    assert again["attempts"] == 1
    assert [e["epoch"] for e in again["epochs"]] == [1, 2]
    assert all(0 < e["eval_seconds"] < e["seconds"] for e in again["epochs"])
    assert again["started_at"] == job["started_at"] and again["finished_at"] == job["finished_at"]
    # The copy was delivered, and found the job already finished.
    [line] = [x for x in service.worker.output().splitlines() if f"[{copy.id}] succeeded" in x]
    assert line.endswith("'job finished'")


@pytest.mark.slow
def test_a_job_survives_its_worker_stopping_and_dying(service: Service) -> None:
    """SIGTERM: the worker stops at a batch boundary and requeues the job. SIGKILL: the lease
    runs out and a new worker takes the job over. Both times it resumes from its checkpoint."""
    job = service.submit(tiny_spec("survivor", training={"epochs": 8}))
    before_stop = service.wait(job["id"], until=lambda j: len(j["epochs"]) >= 2)["epochs"]
    assert service.worker.stop(signal.SIGTERM) == 0
    released = service.job(job["id"])
    assert released["status"] == "queued" and released["attempts"] == 1

    service.worker = service.start_worker()
    running = service.wait(
        job["id"],
        until=lambda j: j["attempts"] == 2 and len(j["epochs"]) >= len(released["epochs"]) + 1,
    )
    before_kill = running["epochs"]
    service.worker.stop(signal.SIGKILL)
    service.worker = service.start_worker()

    job = service.wait(job["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 3, job["error"]
    assert [e["epoch"] for e in job["epochs"]] == list(range(1, 9))
    # Resumed, not restarted: the epochs finished before each stop are the same measurements.
    assert job["epochs"][: len(before_stop)] == before_stop
    assert job["epochs"][: len(before_kill)] == before_kill
    name = worker_of(service, job["id"], attempt=3)
    assert name.split(":")[1] == str(service.worker.pid) and job["worker"] == public_worker(name)


def test_list_jobs_newest_first_with_a_cursor(service: Service) -> None:
    for i in range(3):  # cancelled at once: they need no training
        service.http.post(f"/v1/jobs/{service.submit(tiny_spec(f'page-{i}'))['id']}/cancel")
    first = service.http.get("/v1/jobs", params={"limit": 2}).json()
    ids = [j["id"] for j in first["items"]]
    assert len(ids) == 2 and ids == sorted(ids, reverse=True) and first["next_cursor"]
    new = service.submit(tiny_spec("meanwhile"))  # lands on top, moves no later page
    service.http.post(f"/v1/jobs/{new['id']}/cancel")
    seen = list(ids)
    cursor = first["next_cursor"]
    while cursor:
        page = service.http.get("/v1/jobs", params={"limit": 2, "cursor": cursor}).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
    everything = service.http.get("/v1/jobs", params={"limit": 200}).json()["items"]
    assert seen == [j["id"] for j in everything][1:]  # all but the new one, once, in order
    succeeded = service.http.get("/v1/jobs", params={"status": "succeeded"}).json()["items"]
    assert succeeded and {j["status"] for j in succeeded} == {"succeeded"}


def test_health_and_docs(service: Service) -> None:
    assert service.http.get("/healthz").json() == {"status": "ok"}
    assert service.http.get("/readyz").json() == {"status": "ready"}
    assert service.http.get("/docs").status_code == 200
    paths = service.http.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(paths)


def test_an_image_folder_is_listed_and_trained_on_over_http(service: Service) -> None:
    """PNG files in class folders under LSQ_DATA_ROOTS: GET /v1/datasets offers the folder, a
    job names it, and its result names the classes with their accuracy."""
    from PIL import Image

    root = Path(service.env["LSQ_DATA_ROOTS"]) / "shapes"
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 10)):
        for c, name in enumerate(("top", "bottom")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (16, 16), dtype=np.uint8)
                pixels[c * 8 : c * 8 + 8] = 230
                Image.fromarray(pixels).save(folder / f"{i}.png")
    listed = service.http.get("/v1/datasets").json()
    assert {
        "name": "image_folder",
        "root": str(root),
        "classes": 2,
        "layout": "train/ and val/",
    } in listed
    outside = service.http.post("/v1/jobs", json=tiny_spec(
        "outside", dataset={"name": "image_folder", "root": "/etc"},
    ))  # fmt: skip
    assert outside.status_code == 422 and "dataset.root" in outside.text
    dataset = {"name": "image_folder", "root": str(root), "image_size": 16, "channels": 1}
    job = service.submit(tiny_spec("folder", dataset=dataset, training={"epochs": 1}))
    job = service.wait(job["id"])
    assert job["status"] == "succeeded", job["error"]
    per_class = job["result"]["per_class"]
    assert per_class["classes"] == ["bottom", "top"] and len(per_class["top1"]) == 2
    assert job["result"]["data"]["skipped_images"] == 0


def scrape(service: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics from the loopback, as {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{service.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_prometheus_scrapes_the_jobs_and_the_requests(service: Service) -> None:
    """The gauges move when a job runs (read from the store, at most 5 s old), requests are
    counted by route template, and no owner or job name is ever in the text."""
    before = scrape(service)
    succeeded = ("lsq_jobs", (("status", "succeeded"),))
    job = service.submit(tiny_spec("metrics-secret-name", training={"epochs": 1}))
    assert service.wait(job["id"])["status"] == "succeeded"
    service.http.get(f"/v1/jobs/{job['id']}")
    httpx.head(f"{service.url}/healthz")
    time.sleep(5.1)  # past the gauges' cache
    after = scrape(service)
    assert after[succeeded] == before.get(succeeded, 0) + 1
    assert after[("lsq_queue_depth", ())] >= 0 and ("lsq_worker_leases", ()) in after
    epochs = ("lsq_epoch_seconds_gcount", (("arch", "resnet20"),))
    assert after[epochs] == before.get(epochs, 0) + 1  # the job's one epoch
    seconds = after[("lsq_epoch_seconds_gsum", (("arch", "resnet20"),))]
    assert (
        0 < seconds
        and after[("lsq_epoch_seconds_bucket", (("arch", "resnet20"), ("le", "+Inf")))]
        == after[epochs]
    )
    assert ("lsq_epoch_images_per_second_gcount", (("arch", "resnet20"),)) in after
    assert after[("lsq_store_up", ())] == 1
    route = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200"))
    assert after[("lsq_http_requests_total", route)] >= 1
    head = (("method", "HEAD"), ("route", "/healthz"), ("status", "200"))
    assert after[("lsq_http_requests_total", head)] >= 1  # HEAD is GET's route
    text = httpx.get(f"{service.url}/metrics").text
    assert "metrics-secret-name" not in text and service.token not in text
    assert f"/v1/jobs/{job['id']}" not in text  # templates, never ids


def test_metrics_are_for_the_loopback_or_the_operators_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from starlette.requests import Request

    from api.service.config import get_settings
    from api.web.metrics import _may_read

    def asked(host: str, authorization: str = "") -> bool:
        headers = [(b"authorization", authorization.encode())] if authorization else []
        scope = {"type": "http", "client": (host, 5000), "headers": headers}
        return _may_read(Request(scope))

    get_settings.cache_clear()
    monkeypatch.setenv("LSQ_METRICS_TOKEN", "")
    assert asked("127.0.0.1") and asked("::1") and asked("::ffff:127.0.0.1")
    assert not asked("10.0.0.7") and not asked("testclient")
    get_settings.cache_clear()
    monkeypatch.setenv("LSQ_METRICS_TOKEN", "s3cret")
    assert asked("10.0.0.7", "Bearer s3cret") and asked("10.0.0.7", "bearer  s3cret")
    assert not asked("10.0.0.7", "Bearer other")
    assert not asked("10.0.0.7", "s3cret")
    get_settings.cache_clear()
