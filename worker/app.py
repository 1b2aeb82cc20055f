"""The Celery app of the workers: the consumer side of api.service.queue, and its start-up duties.

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
from datetime import timedelta
from functools import lru_cache

from celery import Celery, signals

from api.service.artifacts import folder_bytes, job_folder, remove_folder
from api.service.config import Settings, get_settings
from api.service.db import session_scope
from api.service.models import utcnow
from api.service.queue import broker_config, enqueue, publish, queue_length
from api.service.store import worker as worker_store

# Set when the worker is asked to stop: a running job stops at the next batch and is requeued.
SHUTTING_DOWN = threading.Event()
log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    app = Celery("lsq", include=["worker.tasks"])
    app.conf.update(
        broker_config(settings),
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


@signals.worker_init.connect
def _migrate(**_: object) -> None:
    from api.service.db import upgrade_database

    upgrade_database()


@signals.worker_ready.connect
def _requeue_unfinished(**_: object) -> None:
    """Make sure every unfinished job has a message: one may have been lost with a worker that
    was killed, or never sent. A duplicate is harmless (the lease decides who runs a job).
    Then sweep, every LSQ_SWEEP_SECONDS, for jobs whose publish failed at submission."""
    with session_scope() as session:
        jobs = [(job.id, job.lease_expires_at) for job in worker_store.unfinished_jobs(session)]
    for job_id, lease_expires_at in jobs:
        enqueue(job_id, at=lease_expires_at)
    with session_scope() as session:
        worker_store.mark_published(session, [job_id for job_id, _ in jobs])
    if jobs:
        log.info("requeued unfinished jobs %s", [job_id for job_id, _ in jobs])
    threading.Thread(target=_sweep, name="publish-sweep", daemon=True).start()


def _sweep() -> None:
    settings = get_settings()
    while not SHUTTING_DOWN.wait(settings.sweep_seconds):
        for duty in (sweep_once, prune_once, measure_once):
            try:
                duty(settings)
            except Exception:  # the database or the broker is out of reach: next round
                log.exception("%s failed", duty.__name__)


def sweep_once(settings: Settings) -> list[int]:
    """Publish the jobs that have no message: never published (the broker was out of reach at
    submission), or whose message was lost with the broker's data. A queued job counts as lost
    when its message is older than LSQ_REPUBLISH_SECONDS and the queue holds no message at all;
    a duplicate is harmless (the lease decides who runs a job). Returns what it published."""
    now = utcnow()
    with session_scope(read_only=True) as session:
        never = worker_store.unpublished_jobs(
            session, now - timedelta(seconds=settings.sweep_seconds)
        )
        queued, orphans = worker_store.stale_jobs(
            session, now - timedelta(seconds=settings.republish_seconds)
        )
    if queued and queue_length() > 0:
        queued = []  # messages are waiting: theirs among them
    job_ids = sorted({*never, *queued, *orphans})
    if job_ids:
        log.info("publishing jobs %s: no message in the broker", job_ids)
        publish(job_ids)
    return job_ids


PRUNE_BATCH = 100  # jobs whose files one round removes at most: a short transaction


def prune_once(settings: Settings) -> list[str]:
    """Retention: remove the files of (a batch of) jobs that ended more than
    LSQ_RETENTION_DAYS ago. Their rows are marked pruned first, the files go after the commit
    (a crash between leaves orphan files, never a row whose files are gone). Returns the
    folders removed."""
    if not settings.retention_days:
        return []
    ended_before = utcnow() - timedelta(days=settings.retention_days)
    with session_scope() as session:
        folders = worker_store.prune_files(session, ended_before, PRUNE_BATCH)
    for folder in folders:
        remove_folder(job_folder(settings, folder))
    if folders:
        log.info("retention: removed the files of %d jobs", len(folders))
    return folders


def measure_once(settings: Settings) -> int:
    """Storage: the bytes of ended jobs whose end no worker measured (a job cancelled while
    queued after a resume, or given up after its workers died, may hold checkpoints). Returns
    how many were measured."""
    with session_scope() as session:
        jobs = worker_store.unmeasured_jobs(session, PRUNE_BATCH)
        for job in jobs:
            job.stored_bytes = folder_bytes(job_folder(settings, job.folder))
    return len(jobs)


@signals.worker_shutting_down.connect
def _stop_training(**_: object) -> None:
    SHUTTING_DOWN.set()
