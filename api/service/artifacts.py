"""A job's files on the shared artifacts folder: LSQ_ARTIFACTS_DIR/jobs/<folder>/, where
<folder> is the job's random folder name (models.new_folder), never its id: ids restart with a
fresh database, and the files of an older database's job 1 must never be the new job 1's."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from fastapi import HTTPException, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.service.config import Settings
from api.service.store.jobs import Deleted
from lsq.files import (
    CHECKPOINT,
    METRICS,
    MODEL,
    MODEL_INT,
    MODEL_ONNX,
    PLOT,
    PLOT_SVG,
    QUANTIZER_PLOT,
    SENSITIVITY_PLOT,
)

DOWNLOADS = (CHECKPOINT, MODEL_INT, MODEL_ONNX, MODEL, METRICS, PLOT, PLOT_SVG, QUANTIZER_PLOT,
             SENSITIVITY_PLOT)  # fmt: skip
CHUNK = 1 << 20  # bytes per read of a download
log = logging.getLogger(__name__)


def job_folder(settings: Settings, folder: str) -> Path:
    """A job's folder, by its `folder` name (Job.folder)."""
    return settings.artifacts / "jobs" / folder


def experiment_folder(settings: Settings, folder: str) -> Path:
    """An experiment's plots, by its `folder` name (Experiment.folder)."""
    return settings.artifacts / "experiments" / folder


def image(folder: Path, name: str) -> Response:
    """A plot a worker drew into `folder` (404 until the first one is drawn), read whole."""
    content = b""
    if (file := _open_regular(folder / name)) is not None:
        with file:
            content = file.read()
    if not content:  # not drawn, not a regular file, or empty: as good as not drawn
        raise HTTPException(404, f"no {name} yet: it is drawn after the first epoch")
    media_type = "image/svg+xml" if name.endswith(".svg") else "image/png"
    return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})


def download(
    path: Path, filename: str, byte_range: str | None = None, if_range: str | None = None
) -> StreamingResponse | None:
    """The file as an attachment, streamed from the one descriptor its length came from (None
    unless it is a regular file). The worker renames each new checkpoint or drawing over the
    last, so FileResponse's stat, then open by name, could announce one file's length and
    send another's: a cut download. One `Range: bytes=...` is served (206) unless `If-Range`
    names another version; a resumed download gets the rest of the same file or all of it."""
    file = _open_regular(path)
    if file is None:
        return None
    stat_ = os.fstat(file.fileno())
    size, etag = stat_.st_size, _etag(stat_)
    span = _span(byte_range, size) if byte_range and if_range in (None, etag) else None
    if span is False:
        file.close()
        raise HTTPException(416, f"the file has {size} bytes", {"Content-Range": f"bytes */{size}"})
    start, end = span or (0, size)
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Content-Length": str(end - start),
               "Content-Disposition": f'attachment; filename="{filename}"'}  # fmt: skip
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return _FileStream(file, start, end, 206 if span else 200, headers)


def _etag(stat_: os.stat_result) -> str:
    """Changes whenever the file does (a new file is a new inode, a write a new mtime), but
    tells a client nothing of the server's inodes or clock."""
    version = f"{stat_.st_ino}-{stat_.st_mtime_ns}-{stat_.st_size}"
    return f'"{hashlib.sha256(version.encode()).hexdigest()[:20]}"'


BYTE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)  # units match so (RFC 9110)


def _span(byte_range: str, size: int) -> tuple[int, int] | Literal[False] | None:
    """[start, end) of one byte range; False where it starts past the end (a 416); None for
    what is not one range read here (several, or malformed): the whole file, as RFC 9110
    allows."""
    match = BYTE_RANGE.fullmatch(byte_range.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = (_number(g) if g else None for g in match.groups())
    if first is None:  # `bytes=-N`: the last N
        return (max(0, size - last), size) if last and size else False
    if last is not None and last < first:
        return None
    end = size if last is None else min(last + 1, size)
    return (first, end) if first < size else False


def _number(digits: str) -> int:
    """A byte position; any past 2^63 is past every file's end (and int() of 5,000 digits is
    slow or refused)."""
    return int(digits) if len(digits) <= 18 else 1 << 63


class _FileStream(StreamingResponse):
    """Bytes [start, end) of an open file, streamed, and the file closed when the response
    ends however it ends (a client gone mid-way leaves the reading generator suspended until
    the garbage collector runs)."""

    def __init__(
        self, file: BinaryIO, start: int, end: int, status: int, headers: dict[str, str]
    ) -> None:
        file.seek(start)
        super().__init__(_chunks(file, end - start), status, headers, "application/octet-stream")
        self.file = file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.file.close()


def _chunks(file: BinaryIO, size: int) -> Iterator[bytes]:
    while size > 0 and (chunk := file.read(min(CHUNK, size))):
        size -= len(chunk)
        yield chunk


def _open_regular(path: Path) -> BinaryIO | None:
    """The file opened for reading, or None unless it is a regular file in a real folder."""
    folder = _open_folder(path.parent)
    if folder is None:
        return None
    try:
        return _open_in(folder, path.name)
    finally:
        os.close(folder)


def _open_folder(folder: Path) -> int | None:
    """A descriptor of the folder itself, or None unless it is one: a job's folder replaced by
    a symlink (to another job's folder, say) is never followed. Files are then opened relative
    to it, so the folder checked is the folder read."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None


def _open_in(folder: int, name: str) -> BinaryIO | None:
    """A file of an open folder, or None unless it is a regular file (never a link followed,
    never a pipe waited on: what else lies in the folder is not the API's to trust)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return os.fdopen(fd, "rb")
    os.close(fd)
    return None


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files in `folder` and below (links are not followed, and count
    as nothing)."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:  # missing, or not a folder
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            total += folder_bytes(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def available(settings: Settings, folder_name: str) -> dict[str, int]:
    """Name -> size of the downloadable files the job has written so far: only these names,
    and only regular files really in the job's own folder (never through a symlink)."""
    folder = _open_folder(job_folder(settings, folder_name))
    if folder is None:
        return {}
    sizes = {}
    try:
        for name in DOWNLOADS:
            if (file := _open_in(folder, name)) is not None:
                with file:
                    sizes[name] = os.fstat(file.fileno()).st_size
    finally:
        os.close(folder)
    return sizes


def remove_deleted(settings: Settings, deleted: Deleted) -> None:
    """The folders of jobs and experiments whose rows were deleted (and committed)."""
    for name in deleted.jobs:
        remove_folder(job_folder(settings, name))
    for name in deleted.experiments:
        remove_folder(experiment_folder(settings, name))


def remove_folder(path: Path) -> bool:
    """Remove a job's or experiment's folder with everything in it. A symlink (or anything
    else that is not a folder) at `path` is unlinked, never followed; rmtree works from
    descriptors, so no link inside is followed either. False (logged) when some is left."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass  # never made (the job never started), or removed already
    except OSError:
        log.exception("could not remove %s; its files are left behind", path)
        return False
    return True
