"""The queue contract: how a job reaches the workers. The API publishes by task name only.

This module builds a Celery app that only sends (no tasks, no worker); ``worker.app`` builds
the app that consumes, from the same broker settings. A job's message is sent after the
transaction that stored it commits, so a worker never gets a job that then rolls back.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from api.service.config import Settings, get_settings
from api.service.db import after_commit, private_file, session_scope
from api.service.models import utcnow
from api.service.store import worker as worker_store

RUN_JOB = "lsq.run_job"  # the task's name: what a worker registers and the API sends
BROKER_TIMEOUT = 3  # seconds, for the readiness probe
log = logging.getLogger(__name__)


class _ClosingChannel(kombu_sqla.Channel):
    """kombu's SQLAlchemy channel, giving its database connection back to the pool. kombu's
    keeps it checked out after a queue_declare (which never commits) and after the channel
    closes (its session is never closed): until the garbage collector ran, 15 such channels
    (the engine's pool) left every readiness check and every publish waiting 30 s for one."""

    def queue_declare(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().queue_declare(*args, **kwargs)
        finally:
            self._release()

    def close(self) -> None:
        self._release()
        super().close()

    def _release(self) -> None:
        if self._session is not None:
            self._session.close()  # ends its transaction; the session stays usable

    def _engine_from_config(self) -> Any:
        url = make_url(self.connection.client.hostname)
        if url.get_backend_name() == "sqlite":
            private_file(url.database)  # before SQLite makes it
        return super()._engine_from_config()


class EmbeddedTransport(kombu_sqla.Transport):
    """The embedded broker: kombu's SQLAlchemy transport with _ClosingChannel."""

    Channel = _ClosingChannel


def broker_config(settings: Settings) -> dict[str, Any]:
    """Celery settings that producer and consumer must share."""
    shared = dict(
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the database holds every outcome
    )
    if settings.broker.startswith("sqla+"):
        # Embedded: kombu's SQLAlchemy transport on a SQLite file beside the database; it works
        # across processes with nothing to install (workers poll it once a second). Named by
        # class: the `sqla+` URL would pick kombu's own.
        url = settings.broker.removeprefix("sqla+")
        return shared | {"broker_url": url, "broker_transport": f"{__name__}:EmbeddedTransport"}
    redis = {"visibility_timeout": settings.visibility_timeout}
    return shared | {"broker_url": settings.broker, "broker_transport_options": redis}


@lru_cache
def producer() -> Celery:
    app = Celery("lsq-producer", set_as_current=False)
    app.conf.update(broker_config(get_settings()))
    return app


def enqueue(job_id: int, *, at: datetime | None = None) -> None:
    """Hand a job to the workers (after the transaction that created it has committed)."""
    countdown = max(0.0, (at - utcnow()).total_seconds()) if at is not None else None
    producer().send_task(RUN_JOB, args=[job_id], countdown=countdown)


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
            worker_store.mark_published(session, sent)
    except Exception:  # the sweep will publish them again: a duplicate message is harmless
        log.exception("jobs %s were queued but could not be marked so", sent)


def enqueue_when_committed(session: Session, job_id: int) -> None:
    """Queue a new job once the transaction that stores it commits."""
    after_commit(session, lambda: publish([job_id]))


def queue_length() -> int:
    """Messages waiting in the job queue (not those a worker holds). Declaring the queue
    counts them: a real round trip on every transport. On a connection of the producer's pool
    (broker_pool_limit of them), never one more."""
    app = producer()
    with app.pool.acquire(block=True, timeout=BROKER_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)
        return conn.default_channel.queue_declare(queue=app.conf.task_default_queue).message_count


def ping_broker() -> None:
    """Raise if the broker cannot be reached."""
    queue_length()
