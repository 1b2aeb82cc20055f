"""All service settings, read from environment variables by one pydantic-settings class."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lsq import spec
from lsq.image_files import DEFAULT_MEMORY_BYTES


class Settings(BaseSettings):
    """Embedded defaults (SQLite and a SQLite-backed broker under LSQ_DATA_DIR) unless
    DATABASE_URL / CELERY_BROKER_URL point at PostgreSQL and Redis."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    data_dir: Path = Field(Path("runs/service"), alias="LSQ_DATA_DIR")
    database_url: str | None = Field(None, alias="DATABASE_URL")
    broker_url: str | None = Field(None, alias="CELERY_BROKER_URL")
    artifacts_dir: Path | None = Field(None, alias="LSQ_ARTIFACTS_DIR")
    compile_cache_dir: Path | None = Field(None, alias="LSQ_COMPILE_CACHE_DIR")
    queue: str = Field("lsq", alias="LSQ_QUEUE", description="Celery queue the jobs go through")
    url: str = Field("http://127.0.0.1:8000", alias="LSQ_URL", description="The CLI's API")
    # A running job renews its lease every heartbeat; a lease not renewed for lease_seconds
    # means its worker is gone and a redelivered message may take the job over.
    heartbeat_seconds: float = Field(2.0, gt=0, alias="LSQ_HEARTBEAT_SECONDS")
    lease_seconds: float = Field(60.0, gt=0, alias="LSQ_LEASE_SECONDS")
    # How long a job initialised from an unfinished job waits before it looks again.
    retry_seconds: float = Field(10.0, gt=0, alias="LSQ_RETRY_SECONDS")
    # How often each worker publishes queued jobs whose message never reached the broker.
    sweep_seconds: float = Field(30.0, gt=0, alias="LSQ_SWEEP_SECONDS")
    # Redis redelivers an unacknowledged message after this; the lease makes that harmless.
    visibility_timeout: int = Field(3600, gt=0, alias="LSQ_VISIBILITY_TIMEOUT")

    # -- what one request may ask for (lsq.spec holds the absolute bounds)
    max_body_bytes: int = Field(256 << 10, gt=0, alias="LSQ_MAX_BODY_BYTES")
    max_epochs: int = Field(1000, ge=1, le=spec.MAX_EPOCHS, alias="LSQ_MAX_EPOCHS")
    max_batch_size: int = Field(4096, ge=1, le=spec.MAX_BATCH, alias="LSQ_MAX_BATCH_SIZE")
    max_subset: int = Field(2_000_000, ge=1, le=spec.MAX_SUBSET, alias="LSQ_MAX_SUBSET")
    max_devices: int = Field(8, ge=1, le=spec.MAX_DEVICES, alias="LSQ_MAX_DEVICES")
    # What one device may hold for one training batch (lsq.cost.training_bytes): a GPU's
    # memory, or a CPU worker's share of its host's.
    max_batch_bytes: int = Field(64 << 30, ge=1, alias="LSQ_MAX_BATCH_BYTES")
    max_experiment_jobs: int = Field(64, ge=2, le=1000, alias="LSQ_MAX_EXPERIMENT_JOBS")
    # A model file sent to POST /v1/models (safetensors weights or an ONNX classifier).
    max_upload_bytes: int = Field(512 << 20, ge=1, alias="LSQ_MAX_UPLOAD_BYTES")
    # Folders a job may read datasets and model.init checkpoints from (':'-separated).
    data_roots: str = Field("/usr/share/datasets", alias="LSQ_DATA_ROOTS")
    # An image folder whose decoded images fit this is held in memory by the worker, else
    # decoded per batch (read by lsq.image_folder from the worker's environment, as `lsq run`).
    data_memory_bytes: int = Field(DEFAULT_MEMORY_BYTES, ge=0, alias="LSQ_DATA_MEMORY_BYTES")

    # MLflow (the mlflow extra): every job a run, every experiment a parent run (worker.tracking)
    mlflow_tracking_uri: str = Field("", alias="LSQ_MLFLOW_TRACKING_URI", description="off")
    mlflow_experiment: str = Field("lsq", alias="LSQ_MLFLOW_EXPERIMENT")

    # GET /metrics from elsewhere than the loopback: the operator's Prometheus sends this as a
    # Bearer token (empty: the loopback only).
    metrics_token: str = Field("", alias="LSQ_METRICS_TOKEN")

    # -- who may call, and how much
    # Host names the API answers to (the Host header): the loopback default stops DNS rebinding.
    allowed_hosts: str = Field("127.0.0.1,localhost,[::1]", alias="LSQ_ALLOWED_HOSTS")
    cors_origins: str = Field("", alias="LSQ_CORS_ORIGINS", description="none: CORS closed")
    # -- each owner's share (defaults; `lsq owner limits OWNER` sets them per owner)
    max_queued_per_owner: int = Field(
        100, ge=1, alias="LSQ_MAX_QUEUED_PER_OWNER", description="unfinished jobs at once"
    )
    max_running_per_owner: int = Field(
        0, ge=0, alias="LSQ_MAX_RUNNING_PER_OWNER", description="0: as many as there are workers"
    )
    # Multiply-accumulates of a whole job (lsq.cost), in units of 10^12: ResNet-18 for 90
    # epochs on ImageNet is about 620,000.
    max_job_tmacs: float = Field(1e6, gt=0, alias="LSQ_MAX_JOB_TMACS")
    max_job_seconds: float = Field(
        7 * 86_400.0, gt=0, alias="LSQ_MAX_JOB_SECONDS", description="seconds run, all attempts"
    )
    max_storage_bytes: int = Field(
        50 << 30, ge=0, alias="LSQ_MAX_STORAGE_BYTES", description="an owner's jobs' files"
    )
    requests_per_second: float = Field(20.0, gt=0, alias="LSQ_REQUESTS_PER_SECOND")
    request_burst: int = Field(40, ge=1, alias="LSQ_REQUEST_BURST")
    idempotency_seconds: float = Field(86_400.0, gt=0, alias="LSQ_IDEMPOTENCY_SECONDS")
    token: str | None = Field(None, alias="LSQ_TOKEN", description="The CLI's API token")

    # -- faults
    max_attempts: int = Field(5, ge=1, alias="LSQ_MAX_ATTEMPTS")
    # A queued job whose message is older than this is published again (a broker restarted
    # without its data loses messages); the lease keeps a duplicate harmless.
    republish_seconds: float = Field(600.0, gt=0, alias="LSQ_REPUBLISH_SECONDS")

    # -- a worker's share of its host: torch starts a thread per core in every process, and
    # several such processes on one host spin against each other (a quantized job slowed 30x)
    torch_threads: int = Field(
        0, ge=0, le=4096, alias="LSQ_TORCH_THREADS", description="0: cores / workers per host"
    )
    workers_per_host: int = Field(1, ge=1, le=4096, alias="LSQ_WORKERS_PER_HOST")

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Settings:
        # A lease must survive a couple of missed beats, or running jobs get taken over.
        if self.lease_seconds < 3 * self.heartbeat_seconds:
            raise ValueError("LSQ_LEASE_SECONDS must be at least 3 x LSQ_HEARTBEAT_SECONDS")
        return self

    @field_validator("data_dir", "artifacts_dir", "compile_cache_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        # The API and the worker may start in different folders; pin paths down once.
        return path.expanduser().resolve() if path is not None else None

    @property
    def db_url(self) -> str:
        if not self.database_url:
            return f"sqlite:///{self.data_dir / 'lsq.db'}"
        url = self.database_url
        for prefix in ("postgres://", "postgresql://"):  # psycopg 3, not SQLAlchemy's psycopg2
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def artifacts(self) -> Path:
        return self.artifacts_dir or self.data_dir / "artifacts"

    @property
    def compile_cache(self) -> Path:
        """torch.compile's caches and the cost book, shared by every worker (lsq.compile_cache)."""
        return self.compile_cache_dir or self.artifacts / "compile-cache"

    @property
    def roots(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.data_roots.split(":") if p]

    @property
    def cpu_threads(self) -> int:
        """Torch threads for one worker process: LSQ_TORCH_THREADS, else OMP_NUM_THREADS (the
        usual way to say it), else the cores this process may run on divided by
        LSQ_WORKERS_PER_HOST."""
        if self.torch_threads:
            return self.torch_threads
        omp = os.environ.get("OMP_NUM_THREADS", "")
        if omp.isdigit() and int(omp) > 0:
            return int(omp)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, (cores or os.cpu_count() or 1) // self.workers_per_host)

    @property
    def token_file(self) -> Path:
        """Where `lsq serve` leaves this machine's token for the CLI (embedded mode)."""
        return self.data_dir / "token"

    # -- retention: the files of a job that ended more than this many days ago are removed by
    # the workers' sweep (its record and epochs stay); 0 keeps them forever
    retention_days: float = Field(
        0.0, ge=0, le=36_500, allow_inf_nan=False, alias="LSQ_RETENTION_DAYS"
    )

    # -- the HTTP server (api.web.server)
    # Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (addresses or networks,
    # comma-separated, uvicorn's syntax); empty: none, the client is the connection's peer.
    forwarded_allow_ips: str = Field("", alias="FORWARDED_ALLOW_IPS")
    # Connections and requests one API process holds at once; past them it answers 503.
    max_connections: int = Field(400, ge=1, alias="LSQ_MAX_CONNECTIONS")
    # A request's headers and body must have arrived this long after it began.
    request_timeout_seconds: float = Field(20.0, gt=0, alias="LSQ_REQUEST_TIMEOUT_SECONDS")
    # Connections one client address (an IPv6 one: its /64) holds at once; past them a new one
    # is closed at once. 0: a quarter of LSQ_MAX_CONNECTIONS. FORWARDED_ALLOW_IPS are exempt.
    max_connections_per_address: int = Field(0, ge=0, alias="LSQ_MAX_CONNECTIONS_PER_ADDRESS")

    @property
    def connections_per_address(self) -> int:
        # A quarter: one address alone never takes the connections from everyone else, and a
        # client's few (a browser opens 6 per site) stay far below it.
        return self.max_connections_per_address or max(1, self.max_connections // 4)


@lru_cache
def get_settings() -> Settings:
    return Settings()
