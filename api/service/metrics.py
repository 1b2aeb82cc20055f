"""What an operator's Prometheus scrapes (GET /metrics): the jobs by status, the queue, the
workers holding a lease, and the stored epochs' durations and images/s as gauge histograms per
network (they fall when jobs are deleted: snapshots, not counters), read from the store, a few
seconds old at most. The HTTP face adds its requests
(api.web.metrics). Aggregates only: no owner, job name or id is ever a label, and a network
label is a name this service knows (any other, a timm or plugin name, is counted as `other`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from api.service.db import session_scope
from api.service.models import Epoch, Job, JobStatus, utcnow
from lsq.archs import ONNX_ARCH, OWN_NAMES, table

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0  # a scrape flood costs five queries every five seconds
EPOCH_SECONDS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
IMAGES_PER_SECOND = (10, 100, 300, 1000, 3000, 10_000, 30_000)
HISTOGRAMS = (  # name, help, the epochs column, bucket bounds
    ("lsq_epoch_seconds", "Seconds an epoch took to train, per network", "seconds", EPOCH_SECONDS),
    (
        "lsq_epoch_images_per_second",
        "Training images per second of an epoch, per network",
        "images_per_second",
        IMAGES_PER_SECOND,
    ),
)


class StoreCollector(Collector):
    """Gauges from the jobs table, read at most once per CACHE_SECONDS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = -CACHE_SECONDS
        self._values: tuple[dict[str, int], int, float, int] = ({}, 0, 0.0, 0)
        self._epochs: dict[str, Any] = {}
        self._up = 0

    def collect(self) -> Iterator[GaugeMetricFamily | GaugeHistogramMetricFamily]:
        with self._lock:
            if time.monotonic() - self._read_at >= CACHE_SECONDS:
                self._read_at = time.monotonic()  # a failed read waits as long as a good one
                try:
                    self._values, self._epochs, self._up = _read(), _read_epochs(), 1
                except Exception:  # the request counts still go out; say the store is down
                    log.exception("metrics: the store could not be read")
                    self._up = 0
            (by_status, queued, oldest, leases), epochs = self._values, self._epochs
        yield GaugeMetricFamily(
            "lsq_store_up", "1 if the last read of the store worked", value=self._up
        )
        if not self._up:
            return
        jobs = GaugeMetricFamily("lsq_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily("lsq_queue_depth", "Jobs waiting for a worker", value=queued)
        yield GaugeMetricFamily(
            "lsq_oldest_queued_seconds", "Age of the oldest queued job (0: none)", value=oldest
        )
        yield GaugeMetricFamily(
            "lsq_worker_leases", "Workers holding a lease on a running job", value=leases
        )
        for (name, help_text, _, bounds), rows in zip(HISTOGRAMS, epochs.values(), strict=True):
            family = GaugeHistogramMetricFamily(name, help_text, labels=["arch"])
            for arch, (counts, total, n) in sorted(rows.items()):
                buckets = [(str(b), c) for b, c in zip(bounds, counts, strict=True)]
                family.add_metric([arch], [*buckets, ("+Inf", n)], total)
            yield family


def _read() -> tuple[dict[str, int], int, float, int]:
    now = utcnow()
    with session_scope(read_only=True) as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        oldest = session.scalar(
            select(func.min(Job.created_at)).where(Job.status == JobStatus.queued)
        )
        leases = session.scalar(
            select(func.count(func.distinct(Job.worker))).where(
                Job.status == JobStatus.running, Job.lease_expires_at > now
            )
        )
    by_status = {JobStatus(status).value: count for status, count in rows}
    age = (now - oldest).total_seconds() if oldest is not None else 0.0
    return by_status, by_status.get(JobStatus.queued.value, 0), max(0.0, age), leases or 0


def _read_epochs() -> dict[str, Any]:
    """Per histogram, per network: cumulative bucket counts, the sum and the count of every
    epoch recorded (one grouped query each; the network read from the job's stored spec)."""
    known = {*OWN_NAMES, *table(), ONNX_ARCH}  # onnx: any uploaded ONNX model
    arch = Job.spec["model"]["arch"].as_string()
    found: dict[str, Any] = {}
    with session_scope(read_only=True) as session:
        for name, _, column, bounds in HISTOGRAMS:
            value = getattr(Epoch, column)
            below = [func.sum(case((value <= b, 1), else_=0)) for b in bounds]
            query = (
                select(arch, func.count(value), func.sum(value), *below)
                .join(Job, Epoch.job_id == Job.id)
                .where(value.is_not(None))
                .group_by(arch)
            )
            per_arch: dict[str, tuple[list[int], float, int]] = {}
            for network, n, total, *counts in session.execute(query).all():
                label = network if network in known else "other"
                old = per_arch.get(label, ([0] * len(bounds), 0.0, 0))
                merged = [a + int(b or 0) for a, b in zip(old[0], counts, strict=True)]
                per_arch[label] = (merged, old[1] + float(total or 0), old[2] + int(n))
            found[name] = per_arch
    return found
