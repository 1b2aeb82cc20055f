"""The one task: run a job by id. What to do with it is decided in worker.runner."""

from __future__ import annotations

import logging
from typing import assert_never

from celery import Task
from celery.exceptions import Reject

from api.service.config import get_settings
from api.service.db import DATABASE_UNAVAILABLE
from api.service.queue import RUN_JOB, enqueue

from .app import SHUTTING_DOWN, celery_app
from .runner import Ack, Requeue, RetryLater, execute

log = logging.getLogger(__name__)


@celery_app.task(name=RUN_JOB, bind=True, max_retries=None)
def run_job(self: Task, job_id: int) -> str:
    if SHUTTING_DOWN.is_set():  # a message that arrived while stopping: leave it to the next
        return _hand_back(job_id, "the worker is stopping")
    try:
        outcome = execute(job_id)
    except DATABASE_UNAVAILABLE:
        # The database is unreachable: not the job's fault, and acknowledging would leave it
        # without a message. Look again later; a lease this worker still holds simply expires,
        # then the job resumes from its last checkpoint.
        log.exception("job %s: database unavailable, retrying", job_id)
        raise self.retry(countdown=get_settings().retry_seconds) from None
    match outcome:
        case Requeue(why):
            return _hand_back(job_id, why)
        case RetryLater(seconds, why):
            # The message is never dropped while the job may still need to run.
            log.info("job %s: %s; looking again in %.0f s", job_id, why, seconds)
            raise self.retry(countdown=seconds)
        case Ack(status, why):
            return str(status) if status else why
        case _:
            assert_never(outcome)


def _hand_back(job_id: int, why: str) -> str:
    """Leave the job to the next worker: a fresh message for it, this one acknowledged (a
    rejected one is logged as an error, with a traceback, at every stop). Rejected after all
    if the broker is out of reach."""
    try:
        enqueue(job_id)
    except Exception:
        raise Reject(f"job {job_id}: {why}", requeue=True) from None
    log.info("job %s: %s; handed back to the queue", job_id, why)
    return f"handed back: {why}"
