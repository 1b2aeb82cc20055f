"""Model uploads over real HTTP (an API and a worker process, on embedded defaults): an ONNX
classifier and safetensors weights sent, checked, trained on, and deleted; every hostile file
refused with a 422 that names the problem; the API's memory bounded while 512 MiB stream in."""

from __future__ import annotations

import re
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import model_files as mf
import pytest

from .conftest import CLI, Service, embedded_service, make_token, tiny_spec

pytestmark = pytest.mark.timeout(300)
SYNTHETIC = {"dataset": "synthetic"}  # 3 x 16 x 16 images, 10 classes


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # 3 s: what this module's slow upload waits between its chunks, and what a stall passes
    with embedded_service(tmp_path_factory, "uploads", LSQ_REQUEST_TIMEOUT_SECONDS="3") as running:
        yield running


def send(svc: Service, path: Path, **fields: str) -> tuple[int, dict]:
    with path.open("rb") as f:
        r = svc.http.post("/v1/models", files={"file": (path.name, f)}, data=fields, timeout=120)
    return r.status_code, r.json()


def test_an_onnx_model_is_sent_trained_and_deleted(svc: Service, tmp_path: Path) -> None:
    status, up = send(svc, mf.onnx_classifier(tmp_path / "resnet20.onnx"))
    assert status == 201, up
    assert (up["kind"], up["channels"], up["image_size"], up["classes"]) == ("onnx", 3, 16, 10)
    assert up["info"]["ops"]["Conv"] == 19 and up["info"]["macs"] > 10**6
    assert send(svc, tmp_path / "resnet20.onnx") == (200, up)  # the same bytes again
    assert [u["id"] for u in svc.http.get("/v1/models").json()] == [up["id"]]

    quant = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]}
    spec = tiny_spec("onnx", quantization=quant, training={"epochs": 1})
    job = svc.submit({**spec, "model": {"upload": up["id"]}})  # as a user writes it
    assert job["spec"]["model"] == {"arch": "onnx", "init": None, "upload": up["id"],
                                    "sha256": up["sha256"]}  # fmt: skip
    r = svc.http.delete(f"/v1/models/{up['id']}")
    assert r.status_code == 409 and f"job {job['id']}" in r.json()["error"]["message"]
    done = svc.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["init_top1"] is not None  # the sent model's own accuracy, first
    files = svc.http.get(f"/v1/jobs/{job['id']}/artifacts").json()
    assert "model.onnx" in [f["name"] for f in files]  # exported back, as QDQ

    assert svc.http.delete(f"/v1/models/{up['id']}").status_code == 204
    assert svc.http.get(f"/v1/models/{up['id']}").status_code == 404
    assert not list((Path(svc.env["LSQ_DATA_DIR"]) / "artifacts" / "uploads").glob("*.onnx"))


def test_safetensors_weights_start_a_job(svc: Service, tmp_path: Path) -> None:
    path = mf.weights(tmp_path / "w.safetensors")
    status, up = send(svc, path, arch="resnet20", **SYNTHETIC)
    assert status == 201, up
    assert (up["kind"], up["arch"], up["image_size"]) == ("safetensors", "resnet20", 16)
    init = {"upload": up["id"]}
    job = svc.submit(tiny_spec("weights", model={"init": init}, training={"epochs": 1}))
    done = svc.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["spec"]["model"]["init"] == {"upload": up["id"], "sha256": up["sha256"]}

    wrong = svc.http.post("/v1/jobs", json=tiny_spec("x", model={"arch": "resnet32", "init": init}))
    assert wrong.status_code == 422
    assert "holds weights of resnet20, not of resnet32" in wrong.text
    as_onnx = svc.http.post("/v1/jobs", json={**tiny_spec("y"), "model": {"upload": up["id"]}})
    assert "is safetensors; name it as model: {arch: ..., init: {upload: ID}}" in as_onnx.text


def test_another_owners_upload_is_missing(svc: Service, tmp_path: Path) -> None:
    _, up = send(svc, mf.weights(tmp_path / "w.safetensors"), arch="resnet20", **SYNTHETIC)
    other = {"Authorization": f"Bearer {make_token(svc.env, 'mallory')}"}
    assert svc.http.get(f"/v1/models/{up['id']}", headers=other).status_code == 404
    assert svc.http.delete(f"/v1/models/{up['id']}", headers=other).status_code == 404
    spec = tiny_spec("steal", model={"init": {"upload": up["id"]}})
    r = svc.http.post("/v1/jobs", json=spec, headers=other)
    assert r.status_code == 422 and f"upload {up['id']} does not exist" in r.text


HOSTILE = [
    (mf.truncated, "truncated"),
    (lambda p: mf.wrong_magic(p), "neither safetensors weights"),
    (mf.safetensors_claims_more, "describes 4,194,304 bytes of tensor data, the file holds 16"),
    (mf.safetensors_overlapping, "overlaps the tensor before it"),
    (mf.onnx_external_data, "keeps its data in another file"),
    (mf.onnx_nesting_bomb, "MaxDepth"),
    (mf.onnx_huge_dims, "declares dimensions"),
    (mf.pickle_checkpoint, "never read here.*safetensors.torch"),
    (mf.plain_pickle, "pickle"),
]


def test_hostile_files_get_a_422_naming_the_problem(svc: Service, tmp_path: Path) -> None:
    good = mf.weights(tmp_path / "good.safetensors")
    for i, (make, problem) in enumerate(HOSTILE):
        path = tmp_path / f"hostile-{i}"
        make(good, path) if make is mf.truncated else make(path)
        status, body = send(svc, path, arch="resnet20", **SYNTHETIC)
        assert status == 422, (make, body)
        assert body["error"]["fields"][0]["field"] == "file"
        assert re.search(problem, body["error"]["fields"][0]["message"]), body
    status, body = send(svc, good, arch="resnet32", **SYNTHETIC)
    assert status == 422 and "missing 72 tensor(s)" in str(body)
    assert svc.http.get("/v1/models").json() == [] or all(
        u["filename"] == "w.safetensors" for u in svc.http.get("/v1/models").json()
    )
    incoming = Path(svc.env["LSQ_DATA_DIR"]) / "artifacts" / "uploads" / ".incoming"
    assert not list(incoming.iterdir())  # nothing half-written is left


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


@pytest.mark.slow
def test_a_512_mib_upload_streams_through_bounded_memory(svc: Service) -> None:
    """One tensor of 512 MiB less the header, for a network it does not fit: the API streams
    it to disk, the check refuses it, and the API's peak memory hardly moves."""
    data_bytes = (512 << 20) - 4096  # the file is 512 MiB: the cap, exactly
    entry = b'{"fc.weight": {"dtype": "U8", "shape": [%d], "data_offsets": [0, %d]}}'
    header = (entry % (data_bytes, data_bytes)).ljust(4096 - 8)  # JSON may end in spaces

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="arch"\r\n\r\nresnet20\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
        yield struct.pack("<Q", len(header)) + header
        chunk = bytes(1 << 20)
        left = data_bytes
        while left:
            yield chunk[: min(left, len(chunk))]
            left -= min(left, len(chunk))
        yield b"\r\n--b--\r\n"

    before = _peak_rss(svc.api.pid)
    r = svc.http.post("/v1/models", content=body(), timeout=300,
                      headers={"Content-Type": "multipart/form-data; boundary=b"})  # fmt: skip
    assert r.status_code == 422, r.text
    assert "missing" in r.text and "fc.weight' is [" in r.text
    grown = (_peak_rss(svc.api.pid) - before) / 1024
    assert grown < 64, f"the API's peak memory grew {grown:.0f} MiB for a 512 MiB upload"


def test_lsq_upload_sends_a_file_and_says_how_to_name_it(svc: Service, tmp_path: Path) -> None:
    path = mf.weights(tmp_path / "cli.safetensors", size=32)
    env = {**svc.env, "LSQ_URL": svc.url, "LSQ_TOKEN": svc.token}
    done = subprocess.run(
        [*CLI, "upload", str(path), "--arch", "resnet20", "--dataset", "cifar10"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "safetensors" in done.stdout and "3 x 32 px, 10 classes" in done.stdout
    assert '{"model": {"arch": "resnet20", "init": {"upload": ' in done.stdout
    bad = subprocess.run([*CLI, "upload", str(mf.plain_pickle(tmp_path / "m.pt"))], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "never read here" in bad.stderr


def test_a_refused_upload_keeps_nothing_and_a_spec_names_no_onnx_path(
    svc: Service, tmp_path: Path
) -> None:
    env = svc.env
    limits = [*CLI, "owner", "limits", "tight", "--max-storage-bytes", "1000"]
    assert subprocess.run(limits, env=env, capture_output=True, timeout=60).returncode == 0
    tight = {"Authorization": f"Bearer {make_token(env, 'tight')}"}
    path = mf.onnx_classifier(tmp_path / "unique.onnx", size=8)
    with path.open("rb") as f:
        r = svc.http.post("/v1/models", files={"file": ("u.onnx", f)}, headers=tight)
    assert r.status_code == 507 and "LSQ_MAX_STORAGE_BYTES" in r.text
    blobs = Path(env["LSQ_DATA_DIR"]) / "artifacts" / "uploads"
    assert not [p for p in blobs.iterdir() if p.name.endswith(".onnx")]  # nothing kept

    spec = tiny_spec("path", model={"arch": "onnx", "onnx": str(path)})
    r = svc.http.post("/v1/jobs", json=spec)
    assert r.status_code == 422 and "name one as model: {upload: ID}" in r.text


def _form(data: bytes, end: bytes = b"\r\n--b--\r\n") -> list[bytes]:
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="m"\r\n\r\n'
    return [head, data, end]


def test_an_upload_has_the_deadline_between_chunks_not_for_the_whole(
    svc: Service, tmp_path: Path
) -> None:
    """With LSQ_REQUEST_TIMEOUT_SECONDS at 3: a file sent over 6 s, a chunk a second, is
    taken; a form cut before its closing boundary is a 422; a body that stalls is dropped."""
    data = mf.weights(tmp_path / "w.safetensors").read_bytes()
    pieces = [data[i : i + len(data) // 6 + 1] for i in range(0, len(data), len(data) // 6 + 1)]

    def slowly(parts: list[bytes], pause: float) -> Iterator[bytes]:
        for part in parts:
            time.sleep(pause)
            yield part

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    started = time.monotonic()
    head, _, end = _form(b"")
    r = svc.http.post("/v1/models", content=slowly([head, *pieces, end], 1.0), headers=headers,
                      timeout=60)  # fmt: skip
    assert time.monotonic() - started > 6
    assert r.status_code == 422 and "give arch" in r.text  # read whole: weights need an arch

    r = svc.http.post("/v1/models", content=_form(data, end=b""), headers=headers)
    assert r.status_code == 422 and "ended before its closing boundary" in r.text

    with pytest.raises(httpx.HTTPError):  # 5 s of silence in the body: the connection closes
        svc.http.post("/v1/models", content=slowly(_form(data), 5.0), headers=headers,
                      timeout=30)  # fmt: skip
    assert svc.http.get("/healthz").status_code == 200
