"""A job's files on the shared artifacts folder: LSQ_ARTIFACTS_DIR/jobs/<id>/."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fastapi import HTTPException, Response

from lsq.files import (
    CHECKPOINT,
    HEALTH_PLOT,
    METRICS,
    MODEL,
    MODEL_INT,
    MODEL_ONNX,
    PLOT,
    PLOT_SVG,
    SENSITIVITY_PLOT,
)

from .config import Settings

DOWNLOADS = (CHECKPOINT, MODEL_INT, MODEL_ONNX, MODEL, METRICS, PLOT, PLOT_SVG, HEALTH_PLOT,
             SENSITIVITY_PLOT)  # fmt: skip


def job_folder(settings: Settings, job_id: int) -> Path:
    return settings.artifacts / "jobs" / str(job_id)


def experiment_folder(settings: Settings, experiment_id: int) -> Path:
    return settings.artifacts / "experiments" / str(experiment_id)


def image(folder: Path, name: str) -> Response:
    """A plot a worker drew into `folder` (404 until the first one is drawn). Read whole, from
    one open: the worker renames each new drawing over the last, so FileResponse's stat, then
    open by name, could announce one drawing's length and send another (a cut connection)."""
    content = _regular_file(folder / name)
    if not content:
        raise HTTPException(404, f"no {name} yet: it is drawn after the first epoch")
    kind = "image/svg+xml" if name.endswith(".svg") else "image/png"
    return Response(content, media_type=kind, headers={"Cache-Control": "no-cache"})


def _regular_file(path: Path) -> bytes:
    """The file's bytes; empty unless it is a regular file (never a link followed, never a
    pipe waited on: what else lies in the folder is not the API's to trust)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        with os.fdopen(os.dup(fd), "rb") as file:
            return file.read()
    finally:
        os.close(fd)


def available(settings: Settings, job_id: int) -> list[Path]:
    """The downloadable files the job has written so far: only these names, and only regular
    files that are really in the job's folder (a symlink planted there is never followed)."""
    folder = job_folder(settings, job_id)
    return [
        folder / name
        for name in DOWNLOADS
        if (folder / name).is_file() and not (folder / name).is_symlink()
        and (folder / name).resolve().parent == folder.resolve()
    ]  # fmt: skip
