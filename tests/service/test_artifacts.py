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
from fastapi import FastAPI, HTTPException

from api import artifacts
from lsq.files import PLOT, atomic_file


def test_a_plot_redrawn_while_it_is_served_arrives_whole(tmp_path: Path) -> None:
    """A worker renames each new drawing over the last; every response is one drawing, whole
    (stat, then open by name, once announced one's length and sent the other's: a cut
    connection)."""
    drawings = [b"\x89PNG small" * 100, b"\x89PNG large" * 3000]
    (tmp_path / PLOT).write_bytes(drawings[0])
    app = FastAPI()
    app.get("/plot.png")(lambda: artifacts.image(tmp_path, PLOT))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    done = threading.Event()

    def redraw() -> None:
        n = 0
        while not done.is_set():
            n += 1
            with atomic_file(tmp_path / PLOT) as f:
                f.write(drawings[n % 2])

    drawing = threading.Thread(target=redraw)
    serving.start()
    drawing.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/plot.png"
        with httpx.Client() as client:  # raises on a body shorter or longer than announced
            bodies = [client.get(url).content for _ in range(300)]
    finally:
        done.set()
        server.should_exit = True
        drawing.join()
        serving.join()
    assert set(bodies) == set(drawings)  # each one drawing, whole; both seen


def test_only_a_regular_file_is_served_as_a_plot(tmp_path: Path) -> None:
    """A link is never followed and a pipe never waited on: each is 'not drawn yet'."""
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
