"""One engine per process, short transactions, and the schema upgrade each process runs at start."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from api.service.config import get_settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK = 0x4C5351  # "LSQ"
SQLITE_BUSY_SECONDS = 30
# The errors of a database out of reach (connection refused or dropped, locked too long), as
# opposed to a query's own errors: worth waiting out, never a job's failure.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


# Connections per process: the API serves up to 40 requests at once (anyio's thread pool),
# each holding one connection, plus the token check's short one.
POOL = dict(pool_size=20, max_overflow=40, pool_timeout=60)


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets WAL, a busy timeout and real (write-locking) transactions."""
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **POOL)
    private_file(make_url(url).database)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False}, **POOL
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        # Take transaction control from the sqlite3 driver (it would not BEGIN before a
        # SELECT or DDL), see SQLAlchemy's "Transactions with SQLite and the sqlite3 driver".
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # a crash leaves no torn write
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so two writers wait on the busy timeout
        # instead of failing with "database is locked" when a reader turns writer. A session
        # that only reads (READ_ONLY) begins a plain transaction: in WAL mode it never waits.
        read_only = conn.get_execution_options().get("lsq_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def private_file(database: str | None) -> None:
    """Make the SQLite file `database` (and its folder) if missing, readable by its owner only,
    before SQLite opens it: SQLite gives its -wal, -shm and -journal files the same mode. Files
    of older versions (0644) are made so too."""
    if not database or database == ":memory:":
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for name in ("", "-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.chmod(f"{path}{name}", 0o600)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().db_url)


@lru_cache
def _sessionmaker(read_only: bool = False) -> sessionmaker[Session]:
    engine = get_engine().execution_options(lsq_read_only=read_only)
    if read_only and engine.dialect.name == "postgresql":
        # Each read is its own statement under READ COMMITTED anyway: autocommit spares the
        # BEGIN and COMMIT round trips.
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(engine, expire_on_commit=False)


def insert_for(session: Session) -> Any:
    """The session's dialect's INSERT, which has ON CONFLICT."""
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[
        session.get_bind().dialect.name
    ]


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the session's transaction has committed (never after a rollback)."""
    session.info.setdefault("after_commit", []).append(callback)


@contextmanager
def session_scope(read_only: bool = False) -> Iterator[Session]:
    """A session whose transaction commits when the block ends and rolls back on an error.
    `read_only` sessions must not write (on SQLite they do not take the write lock)."""
    with _sessionmaker(read_only)() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        for callback in session.info.pop("after_commit", []):
            callback()


def migration_lock(conn: Connection) -> None:
    """Serialise migrations of processes that start at once, until `conn`'s transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: the transaction already holds the
    database's write lock (BEGIN IMMEDIATE, see make_engine).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})


def alembic_config():  # noqa: ANN201 - alembic.config.Config, imported lazily
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade_database(engine: Engine | None = None) -> None:
    """Apply every migration up to head; safe when several processes do it at once."""
    from alembic import command

    config = alembic_config()
    with (engine or get_engine()).begin() as conn:
        migration_lock(conn)
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def ping() -> None:
    """Raise if the database cannot be reached."""
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
