"""Job folders that are never read through a symlink, and never another database's: the API
over real HTTP (uvicorn)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lsq.files import CHECKPOINT, METRICS, MODEL, PLOT

from .conftest import job_folder_name, tiny_spec
from .test_security import Api

pytestmark = pytest.mark.timeout(300)

OWNER = "ann"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An API process alone: jobs stay queued until cancelled, which ends them."""
    server = Api(tmp_path_factory.mktemp("deletion"))
    yield server
    server.proc.stop()


@pytest.fixture(scope="module")
def ann(api: Api) -> Iterator[httpx.Client]:
    with api.client(OWNER) as client:
        yield client


def ended_job(api: Api, client: httpx.Client, name: str) -> tuple[int, Path]:
    """A cancelled job of the client's owner with files in its folder: its id and folder."""
    job_id = client.post("/v1/jobs", json=tiny_spec(name)).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    folder = api.data / "artifacts" / "jobs" / job_folder_name(api.data, job_id)
    write_files(folder)
    return job_id, folder


def write_files(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in (METRICS, MODEL, CHECKPOINT, PLOT):
        (folder / name).write_bytes(f"{folder.name}'s {name}".encode())


def test_a_job_folder_that_is_a_symlink_serves_nothing(api: Api, ann: httpx.Client) -> None:
    """A job's folder replaced by a symlink to another job's folder: the other job's files are
    not this job's, whatever the link says."""
    _, theirs = ended_job(api, ann, "theirs")
    mine = ann.post("/v1/jobs", json=tiny_spec("mine")).json()["id"]
    folder = api.data / "artifacts" / "jobs" / job_folder_name(api.data, mine)
    folder.symlink_to(theirs, target_is_directory=True)
    assert ann.get(f"/v1/jobs/{mine}/artifacts").json() == []
    for name in (METRICS, MODEL, CHECKPOINT):
        assert ann.get(f"/v1/jobs/{mine}/artifacts/{name}").status_code == 404
    assert ann.get(f"/v1/jobs/{mine}/{PLOT}").status_code == 404


def test_a_fresh_database_never_serves_the_files_an_older_one_left(tmp_path: Path) -> None:
    """The API pointed at a fresh database and an artifacts folder an older database's jobs
    wrote to: its job 1 is not their job 1."""
    jobs = tmp_path / "artifacts" / "jobs"
    for name in ("1", "2", "0123456789abcdef0123456789abcdef"):
        write_files(jobs / name)
    fresh = Api(tmp_path)
    try:
        with fresh.client("new-owner") as client:
            job = client.post("/v1/jobs", json=tiny_spec("first")).json()
            assert job["id"] == 1
            assert client.get("/v1/jobs/1/artifacts").json() == []
            for name in (METRICS, MODEL, CHECKPOINT):
                assert client.get(f"/v1/jobs/1/artifacts/{name}").status_code == 404
            assert client.get(f"/v1/jobs/1/{PLOT}").status_code == 404
    finally:
        fresh.proc.stop()
    assert (jobs / "1" / MODEL).read_bytes() == f"1's {MODEL}".encode()  # never the new job's
