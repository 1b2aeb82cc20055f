"""The Celery app. The API imports it to publish jobs, so nothing here imports torch.

One worker process trains one job at a time: the solo pool runs tasks in the worker process
itself, so no process ever forks after torch has run in it (a forked child of a process that
ran torch can hang in OpenMP or CUDA). A host with several GPUs runs one worker per GPU
(``lsq worker --gpus 0,1``), each pinned with CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from datetime import datetime, timedelta
from functools import lru_cache

from celery import Celery, signals
from sqlalchemy.orm import Session

from api import store
from api.config import Settings, get_settings
from api.db import after_commit, session_scope
from api.models import utcnow

RUN_JOB = "lsq.run_job"
# Set when the worker is asked to stop: a running job stops at the next batch and is requeued.
SHUTTING_DOWN = threading.Event()
log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    app = Celery("lsq", broker=settings.broker, include=["worker.tasks"])
    # Embedded: kombu's SQLAlchemy transport on a SQLite file beside the database; it works
    # across processes with nothing to install (workers poll it once a second). Its options go
    # to create_engine, so it takes none of Redis's.
    redis = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        broker_transport_options={} if settings.embedded_broker else redis,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the database holds every outcome
        # A message is acknowledged only when its job has ended, so a worker that dies
        # mid-job leaves it to be redelivered; the database lease keeps it from running twice.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",  # the job runs in the worker process: nothing forks after torch
        worker_hijack_root_logger=False,
        worker_enable_remote_control=not settings.embedded_broker,  # needs fanout
    )
    return app


celery_app = make_celery(get_settings())


@lru_cache
def worker_name() -> str:
    """Who holds a job's lease: host, process, (when pinned) GPU, and a token of this process's
    life, so a restarted container whose worker gets the same pid is not taken for the old one."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    name = f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{gpu}" if gpu else "")
    return f"{name}:{secrets.token_hex(3)}"


def enqueue(job_id: int, *, at: datetime | None = None) -> None:
    """Hand a job to the workers (after the transaction that created it has committed)."""
    countdown = max(0.0, (at - utcnow()).total_seconds()) if at is not None else None
    celery_app.send_task(RUN_JOB, args=[job_id], countdown=countdown)


def publish(job_ids: list[int]) -> None:
    """Enqueue queued jobs and record it; what fails stays unpublished for the next sweep."""
    sent = []
    for job_id in job_ids:
        try:
            enqueue(job_id)
            sent.append(job_id)
        except Exception:
            log.exception("job %s is stored but not queued; a worker's sweep will", job_id)
    try:
        with session_scope() as session:
            store.mark_published(session, sent)
    except Exception:  # the sweep will publish them again: a duplicate message is harmless
        log.exception("jobs %s were queued but could not be marked so", sent)


def enqueue_when_committed(session: Session, job_id: int) -> None:
    """Queue a new job once the transaction that stores it commits: a worker never gets a job
    that then rolls back."""
    after_commit(session, lambda: publish([job_id]))


@signals.worker_init.connect
def _migrate(**_: object) -> None:
    from api.db import upgrade_database

    upgrade_database()


@signals.worker_ready.connect
def _requeue_unfinished(**_: object) -> None:
    """Make sure every unfinished job has a message: one may have been lost with a worker that
    was killed, or never sent. A duplicate is harmless (the lease decides who runs a job).
    Then sweep, every LSQ_SWEEP_SECONDS, for jobs whose publish failed at submission."""
    with session_scope() as session:
        jobs = [(job.id, job.lease_expires_at) for job in store.unfinished_jobs(session)]
    for job_id, lease_expires_at in jobs:
        enqueue(job_id, at=lease_expires_at)
    with session_scope() as session:
        store.mark_published(session, [job_id for job_id, _ in jobs])
    if jobs:
        log.info("requeued unfinished jobs %s", [job_id for job_id, _ in jobs])
    threading.Thread(target=_sweep, name="publish-sweep", daemon=True).start()


def _sweep() -> None:
    every = get_settings().sweep_seconds
    while not SHUTTING_DOWN.wait(every):
        try:
            with session_scope() as session:
                job_ids = store.unpublished_jobs(session, utcnow() - timedelta(seconds=every))
            if job_ids:
                log.info("publishing jobs %s, not queued at submission", job_ids)
                publish(job_ids)
        except Exception:  # the database or the broker is out of reach: next round
            log.exception("publish sweep failed")


@signals.worker_shutting_down.connect
def _stop_training(**_: object) -> None:
    SHUTTING_DOWN.set()
