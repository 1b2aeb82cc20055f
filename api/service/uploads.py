"""Model files users send (POST /v1/models): received chunk by chunk into a temporary file
(hashed and capped as it comes), inspected by `python -m lsq.model_file` in a child process
under memory and time limits (a hostile file costs that process, never the API's), then kept
once per content: LSQ_ARTIFACTS_DIR/uploads/<sha256>.<kind>, renamed into place whole."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

from api.service.config import Settings
from lsq.file_kinds import HEAD_BYTES, kind_of

CHECK_SECONDS = 60.0  # wall clock for one inspection (a large ONNX model converts in ~10 s)
CHECK_MEMORY = 4 << 30  # address space of the inspecting process, beyond 4x the file's size


class TooLarge(Exception):
    """An upload over LSQ_MAX_UPLOAD_BYTES."""


class Refused(ValueError):
    """A file that is no model this service takes, with why."""


def folder(settings: Settings) -> Path:
    return settings.artifacts / "uploads"


def blob(settings: Settings, sha256: str, kind: str) -> Path:
    """Where the bytes of an upload live (the same for every owner who sent them)."""
    return folder(settings) / f"{sha256}.{kind}"


class Incoming:
    """A file being received: written to a temporary file beside the blobs, hashed as it
    comes, refused past `max_bytes`."""

    def __init__(self, settings: Settings) -> None:
        incoming = folder(settings) / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=incoming)
        self.path, self._file = Path(name), os.fdopen(fd, "wb")
        self.size, self.head, self.max_bytes = 0, b"", settings.max_upload_bytes
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(f"the file is over {self.max_bytes:,} bytes (LSQ_MAX_UPLOAD_BYTES)")
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> tuple[str, str]:
        """(sha256, kind) of the whole file; Refused when it is no model file."""
        self._file.close()
        try:
            kind = kind_of(self.head, self.size)
        except ValueError as e:
            raise Refused(str(e)) from None
        return self._hash.hexdigest(), kind

    def keep(self, target: Path) -> None:
        """Move the file to `target` (a blob: the same bytes may be there already)."""
        self._file.close()
        os.replace(self.path, target)

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


_lock: asyncio.Lock | None = None


async def inspect(path: Path, size: int, shape: dict[str, Any]) -> dict[str, Any]:
    """What lsq.model_file finds in `path`, checked for `shape` (arch, classes, channels,
    image_size); Refused says why it is not taken. One at a time: each loads torch."""
    global _lock
    _lock = _lock or asyncio.Lock()
    args = [sys.executable, "-m", "lsq.model_file", str(path)]
    for key, value in shape.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    limit = CHECK_MEMORY + 4 * size
    async with _lock:
        child = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
            env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
        )
        try:
            out, _ = await asyncio.wait_for(child.communicate(), CHECK_SECONDS)
        except TimeoutError:
            child.kill()
            await child.wait()
            raise Refused(f"checking the file took over {CHECK_SECONDS:.0f} s") from None
    try:
        found = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Refused(
            f"the file could not be read within {limit >> 20:,} MiB of memory (exit "
            f"{child.returncode})"
        ) from None
    if "error" in found:
        raise Refused(str(found["error"]))
    return found
