"""Files the workers write while the API serves them, over real HTTP (uvicorn)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Response

from api import artifacts
from lsq.files import CHECKPOINT, PLOT, atomic_file


def serve(tmp_path: Path, name: str) -> Response:
    if name == PLOT:
        return artifacts.image(tmp_path, name)
    response = artifacts.download(tmp_path / name, f"job-1-{name}")
    if response is None:
        raise HTTPException(404)
    return response


@pytest.mark.parametrize("name", [PLOT, CHECKPOINT])
def test_a_file_replaced_while_it_is_served_arrives_whole(tmp_path: Path, name: str) -> None:
    """A worker renames each new drawing or checkpoint over the last; every response is one
    version, whole (stat, then open by name, once announced one's length and sent the
    other's: a cut connection)."""
    versions = [b"small" * 100, b"large" * 300_000]  # the large one takes two reads
    (tmp_path / name).write_bytes(versions[0])
    app = FastAPI()
    app.get("/file")(lambda: serve(tmp_path, name))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    done = threading.Event()

    def replace() -> None:
        n = 0
        while not done.is_set():
            n += 1
            with atomic_file(tmp_path / name) as f:
                f.write(versions[n % 2])

    replacing = threading.Thread(target=replace)
    serving.start()
    replacing.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/file"
        with httpx.Client() as client:  # raises on a body shorter or longer than announced
            responses = [client.get(url) for _ in range(200)]
    finally:
        done.set()
        server.should_exit = True
        replacing.join()
        serving.join()
    assert set(r.content for r in responses) == set(versions)  # each one version; both seen
    if name == CHECKPOINT:
        assert responses[0].headers["content-disposition"] == f'attachment; filename="job-1-{name}"'


def test_only_a_regular_file_is_served(tmp_path: Path) -> None:
    """A link is never followed and a pipe never waited on: each is 'not drawn yet', or no
    download."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a plot")
    (tmp_path / "plot.png").symlink_to(secret)
    os.mkfifo(tmp_path / "plot.svg")
    (tmp_path / "quantizers.png").mkdir()
    (tmp_path / "jobs").write_bytes(b"a file where a folder should be")
    where = [(tmp_path, n) for n in ("plot.png", "plot.svg", "quantizers.png", "sensitivity.png")]
    for folder, name in [*where, (tmp_path / "jobs" / "2", "plot.png")]:
        with pytest.raises(HTTPException) as err:
            artifacts.image(folder, name)
        assert err.value.status_code == 404
    for name in ("plot.png", "plot.svg", "quantizers.png"):
        assert artifacts.download(tmp_path / name, name) is None
