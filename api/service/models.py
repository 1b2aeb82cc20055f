"""The tables: a job and one row per finished epoch. Artifacts live on disk, never in here."""

from __future__ import annotations

import typing
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from lsq.metrics import EpochMetrics
from lsq.spec import SPEC_VERSION


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_folder() -> str:
    """A job's or experiment's folder name: random, so never the name of an older row's files
    (ids restart with a fresh database; the artifacts folder may not)."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them without a zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use api.service.models.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


UNFINISHED = (JobStatus.queued, JobStatus.running)
FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)

STATUS = Enum(
    JobStatus,
    name="job_status",
    native_enum=False,
    create_constraint=True,
    length=16,
    values_callable=lambda e: [m.value for m in e],
)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    # Ids only grow (no reuse after a delete), which keeps cursor pagination and artifact
    # folders (artifacts/jobs/<id>) unambiguous.
    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),  # the workers' sweeps
        Index("ix_jobs_owner_status_id", "owner", "status", "id"),  # by status, and the quota
        Index("ix_jobs_owner_id", "owner", "id"),  # an owner's list, a page at a time
        Index("ux_jobs_folder", "folder", unique=True),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Who submitted it (a token's owner); nobody else sees it.
    owner: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    # Its files: artifacts/jobs/<folder> (rows from before migration 0012 keep their id).
    # Always set; nullable only because SQLite cannot add NOT NULL to a column in place.
    folder: Mapped[str] = mapped_column(String(32), default=new_folder, nullable=True)
    # Estimated at submission: multiply-accumulates of the whole run, in units of 10^12.
    compute_tmacs: Mapped[float | None] = mapped_column(Float)
    # Bytes of its folder, measured when it ends (None before, or once its files are pruned).
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Seconds workers have run it, all attempts together (its time limit counts these).
    run_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # When retention (LSQ_RETENTION_DAYS) removed its files; its row and epochs stay.
    files_pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Of an experiment: its baseline (variant None) or the variant-th row's job for one seed.
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    variant: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[JobStatus] = mapped_column(STATUS, default=JobStatus.queued)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The version of lsq.spec the spec was written with; older ones are upgraded when read.
    spec_version: Mapped[int] = mapped_column(Integer, default=SPEC_VERSION)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Progress: the epoch being trained (1-based) and the fraction of it done.
    progress_epoch: Mapped[int] = mapped_column(Integer, default=0)
    progress_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # One entry per claim: {"attempt", "worker", "at"}; the story of a job that keeps dying.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # The lease: who runs the job and until when it counts as alive without a heartbeat.
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # When the job's message last went to the broker; NULL: not yet (the publish after the
    # commit failed, or has not happened), so a worker's sweep publishes it.
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the quantizers' health says is wrong, as of the last epoch (written with it, so a
    # read of the job needs no look at the epochs' health).
    warnings: Mapped[list[str] | None] = mapped_column(JSON)

    epochs: Mapped[list[Epoch]] = relationship(
        back_populates="job",
        order_by="Epoch.epoch",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Experiment(Base):
    """A baseline and variants of it, one job each per seed (api.service.experiments)."""

    __tablename__ = "experiments"
    __table_args__ = (
        Index("ix_experiments_owner_id", "owner", "id"),
        Index("ux_experiments_folder", "folder", unique=True),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    folder: Mapped[str] = mapped_column(String(32), default=new_folder, nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the request, as validated
    # The lsq.spec version its base (a job spec without its name) was written with.
    spec_version: Mapped[int] = mapped_column(Integer, default=SPEC_VERSION)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    jobs: Mapped[list[Job]] = relationship(order_by="Job.id", passive_deletes=True)


class Token(Base):
    """An API token: only its SHA-256 is stored (tokens are random, so no salt is needed)."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Owner(Base):
    """An owner's limits as an operator set them (`lsq owner limits`); None: the service's
    default (LSQ_MAX_...). The row is also what a submission locks: one owner's submissions
    are counted against its limits one at a time."""

    __tablename__ = "owners"

    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    max_queued: Mapped[int | None] = mapped_column(Integer)
    max_running: Mapped[int | None] = mapped_column(Integer)
    max_job_tmacs: Mapped[float | None] = mapped_column(Float)
    max_job_seconds: Mapped[float | None] = mapped_column(Float)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger)


class Upload(Base):
    """A model file an owner sent (api.service.uploads): its bytes live once per sha256 under
    the artifacts root; the network shape it was checked for is kept with it."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_owner", "owner", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    filename: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(20))  # lsq.file_kinds: safetensors or onnx
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    arch: Mapped[str | None] = mapped_column(String(200))  # the network weights are for
    classes: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    image_size: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)  # what lsq.model_file found
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyKey(Base):
    """A submission's Idempotency-Key: the same key and body return the job it created."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Epoch(Base):
    """The metrics of one finished epoch; (job_id, epoch) is the key, so a rewrite is idempotent.

    One column per field of lsq.metrics.EpochMetrics (added below, so a new metric is a field
    there and a migration that adds its column)."""

    __tablename__ = "epochs"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="epochs")


def _metric_columns() -> tuple[str, ...]:
    """Add a column to `epochs` for each field of EpochMetrics but the key; their names."""
    names = tuple(name for name in EpochMetrics.model_fields if name != "epoch")
    for name in names:
        field = EpochMetrics.model_fields[name]
        # int or float (optional or not) get a number column, anything structured JSON
        kinds = [a for a in typing.get_args(field.annotation) if a is not type(None)]
        kind = kinds[0] if len(kinds) == 1 else field.annotation
        column_type = {int: Integer, float: Float}.get(kind, JSON)
        column = mapped_column(column_type, nullable=not field.is_required())
        setattr(Epoch, name, column)
    return names


EPOCH_METRICS = _metric_columns()
# The columns a job's epochs are listed with: the numbers (quantizer health is its own route).
EPOCH_NUMBERS = tuple(n for n in EPOCH_METRICS if n != "quantizers")
