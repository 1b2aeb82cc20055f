"""A job's files on the shared artifacts folder: LSQ_ARTIFACTS_DIR/jobs/<id>/."""

from __future__ import annotations

from pathlib import Path

from lsq.files import CHECKPOINT, CURVE, METRICS, MODEL, MODEL_INT

from .config import Settings

DOWNLOADS = (CHECKPOINT, MODEL_INT, MODEL, METRICS, CURVE)


def job_folder(settings: Settings, job_id: int) -> Path:
    return settings.artifacts / "jobs" / str(job_id)


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
