"""All service settings, read from environment variables by one pydantic-settings class."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Embedded defaults (SQLite and a SQLite-backed broker under LSQ_DATA_DIR) unless
    DATABASE_URL / CELERY_BROKER_URL point at PostgreSQL and Redis."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    data_dir: Path = Field(Path("runs/service"), alias="LSQ_DATA_DIR")
    database_url: str | None = Field(None, alias="DATABASE_URL")
    broker_url: str | None = Field(None, alias="CELERY_BROKER_URL")
    artifacts_dir: Path | None = Field(None, alias="LSQ_ARTIFACTS_DIR")
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

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Settings:
        # A lease must survive a couple of missed beats, or running jobs get taken over.
        if self.lease_seconds < 3 * self.heartbeat_seconds:
            raise ValueError("LSQ_LEASE_SECONDS must be at least 3 x LSQ_HEARTBEAT_SECONDS")
        return self

    @field_validator("data_dir", "artifacts_dir")
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


@lru_cache
def get_settings() -> Settings:
    return Settings()
