"""The one task: run a job by id. What to do with it is decided in worker.runner."""

from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import Reject

from api.config import get_settings
from api.db import DATABASE_UNAVAILABLE

from .app import RUN_JOB, SHUTTING_DOWN, celery_app
from .runner import execute

log = logging.getLogger(__name__)


@celery_app.task(name=RUN_JOB, bind=True, max_retries=None)
def run_job(self: Task, job_id: int) -> str:
    if SHUTTING_DOWN.is_set():  # a message that arrived while stopping: leave it to the next
        raise Reject("the worker is stopping", requeue=True)
    try:
        outcome = execute(job_id)
    except DATABASE_UNAVAILABLE:
        # The database is unreachable: not the job's fault, and acknowledging would leave it
        # without a message. Look again later; a lease this worker still holds simply expires,
        # then the job resumes from its last checkpoint.
        log.exception("job %s: database unavailable, retrying", job_id)
        raise self.retry(countdown=get_settings().retry_seconds) from None
    if outcome.requeue:
        raise Reject(f"job {job_id} {outcome.status}", requeue=True)
    if outcome.retry_in is not None:
        # Another worker holds a live lease, or the job's starting model is not ready yet:
        # look again later, so the job is never left without a message.
        raise self.retry(countdown=outcome.retry_in)
    return outcome.status
