"""Files the workers write while the API serves them, over real HTTP (uvicorn)."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response

from api.service import artifacts
from lsq.files import CHECKPOINT, PLOT, atomic_file


def serve(tmp_path: Path, name: str, request: Request) -> Response:
    if name == PLOT:
        return artifacts.image(tmp_path, name)
    response = artifacts.download(
        tmp_path / name, f"job-1-{name}", request.headers.get("range"),
        request.headers.get("if-range"),
    )  # fmt: skip
    if response is None:
        raise HTTPException(404)
    return response


@contextlib.contextmanager
def serving(folder: Path, name: str) -> Iterator[str]:
    """uvicorn in a thread, serving `folder/name` at the URL yielded."""
    app = FastAPI()

    @app.get("/file")
    def endpoint(request: Request) -> Response:
        return serve(folder, name, request)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/file"
    finally:
        server.should_exit = True
        thread.join()


@pytest.mark.parametrize("name", [PLOT, CHECKPOINT])
def test_a_file_replaced_while_it_is_served_arrives_whole(tmp_path: Path, name: str) -> None:
    """A worker renames each new drawing or checkpoint over the last; every response is one
    version, whole (stat, then open by name, once announced one's length and sent the
    other's: a cut connection)."""
    versions = [b"small" * 100, b"large" * 300_000]  # the large one takes two reads
    (tmp_path / name).write_bytes(versions[0])
    done = threading.Event()

    def replace() -> None:
        n = 0
        while not done.is_set():
            n += 1
            with atomic_file(tmp_path / name) as f:
                f.write(versions[n % 2])

    replacing = threading.Thread(target=replace)
    replacing.start()
    try:
        with serving(tmp_path, name) as url, httpx.Client() as client:
            responses = [client.get(url) for _ in range(200)]  # raises on a cut body
    finally:
        done.set()
        replacing.join()
    assert set(r.content for r in responses) == set(versions)  # each one version; both seen
    if name == CHECKPOINT:
        assert responses[0].headers["content-disposition"] == f'attachment; filename="job-1-{name}"'


def test_a_download_the_client_leaves_closes_its_file(tmp_path: Path) -> None:
    """However the response ends: not when the garbage collector gets to it."""
    path = tmp_path / CHECKPOINT
    path.write_bytes(b"x" * (32 * artifacts.CHUNK))  # more than the sockets' buffers hold

    def open_here() -> int:
        here = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                here.append(os.readlink(f"/proc/self/fd/{fd}") == str(path))
        return sum(here)

    gc.disable()  # a reference cycle would otherwise close it sometime
    try:
        with serving(tmp_path, CHECKPOINT) as url:
            for _ in range(3):
                with httpx.stream("GET", url) as response:
                    next(response.iter_raw())
            deadline = time.monotonic() + 10
            while open_here() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert open_here() == 0
    finally:
        gc.enable()


def test_only_a_regular_file_is_served(tmp_path: Path) -> None:
    """A link is never followed and a pipe never waited on: each is 'not drawn yet', or no
    download."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a plot")
    (tmp_path / "plot.png").symlink_to(secret)
    os.mkfifo(tmp_path / "plot.svg")
    (tmp_path / "quantizers.png").mkdir()
    (tmp_path / "jobs").write_bytes(b"a file where a folder should be")
    (tmp_path / "sensitivity.png").write_bytes(b"")  # as good as not drawn
    where = [(tmp_path, n) for n in ("plot.png", "plot.svg", "quantizers.png", "sensitivity.png")]
    for folder, name in [*where, (tmp_path / "jobs" / "2", "plot.png")]:
        with pytest.raises(HTTPException) as err:
            artifacts.image(folder, name)
        assert err.value.status_code == 404
    for name in ("plot.png", "plot.svg", "quantizers.png"):
        assert artifacts.download(tmp_path / name, name) is None


def test_one_byte_range_of_a_download_and_a_resume_that_keeps_to_one_version(
    tmp_path: Path,
) -> None:
    content = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / CHECKPOINT).write_bytes(content)
    with serving(tmp_path, CHECKPOINT) as url, httpx.Client() as client:

        def get(byte_range: str, **headers: str) -> httpx.Response:
            return client.get(url, headers={"Range": byte_range, **headers})

        whole = client.get(url)
        assert whole.content == content and whole.headers["accept-ranges"] == "bytes"
        part = get("bytes=10-19")
        assert (part.status_code, part.content) == (206, content[10:20])
        assert part.headers["content-range"] == f"bytes 10-19/{len(content)}"
        assert get("bytes=-5").content == content[-5:]
        assert get(f"bytes={len(content) - 6}-").content == content[-6:]
        assert get(f"bytes=0-{10 * len(content)}").content == content  # cut at the end
        for ignored in ("bytes=5-2", "bytes=0-1," + "5-6," * 50, "lines=1-2"):
            assert (get(ignored).status_code, get(ignored).content) == (200, content), ignored
        past = get(f"bytes={len(content)}-")
        assert past.status_code == 416
        assert past.headers["content-range"] == f"bytes */{len(content)}"
        etag = whole.headers["etag"]
        assert get("bytes=10-19", **{"If-Range": etag}).content == content[10:20]
        # the worker wrote a new checkpoint since: the resume gets it whole, never a splice
        with atomic_file(tmp_path / CHECKPOINT) as f:
            f.write(content[::-1])
        resumed = get("bytes=10-", **{"If-Range": etag})
        assert (resumed.status_code, resumed.content) == (200, content[::-1])
        assert resumed.headers["etag"] != etag


@pytest.mark.parametrize(
    ("byte_range", "size", "span"),
    [
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=3-", 10, (3, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),  # more than there is: all of it
        ("bytes=-0", 10, False),
        ("bytes=0-", 0, False),  # nothing to give
        ("bytes=10-12", 10, False),
        ("bytes=4-3", 10, None),
        ("bytes=-", 10, None),
        (" bytes=1-2 ", 10, (1, 3)),
        ("BYTES=1-2", 10, (1, 3)),  # units match whatever their case
        ("bytes=" + "9" * 19 + "-", 10, False),  # past the end, however many digits
        ("bytes=" + "9" * 5000 + "-", 10, False),
        ("bytes=2-" + "9" * 5000, 10, (2, 10)),
        ("bytes=0-0," + "1-1," * 50, 10, None),  # several ranges: the whole file
    ],
)
def test_a_byte_range_is_read_as_rfc_9110_says(byte_range: str, size: int, span: object) -> None:
    assert artifacts._span(byte_range, size) == span
