"""A job's files on the shared artifacts folder: LSQ_ARTIFACTS_DIR/jobs/<id>/."""

from __future__ import annotations

from pathlib import Path

from .config import Settings

# The files lsq.train.run writes (lsq.train's CHECKPOINT, MODEL_INT, MODEL, METRICS; kept here
# so the API need not load torch, and checked against lsq.train by the tests).
CHECKPOINT, MODEL_INT, MODEL, METRICS = "checkpoint.pt", "model-int.pt", "model.pt", "metrics.json"
DOWNLOADS = (CHECKPOINT, MODEL_INT, MODEL, METRICS)


def job_folder(settings: Settings, job_id: int) -> Path:
    return settings.artifacts / "jobs" / str(job_id)


def available(settings: Settings, job_id: int) -> list[Path]:
    """The downloadable files the job has written so far (only these names are ever served)."""
    folder = job_folder(settings, job_id)
    return [folder / name for name in DOWNLOADS if (folder / name).is_file()]
