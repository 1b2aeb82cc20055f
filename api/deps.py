"""Dependencies of the routes, as Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from .config import Settings, get_settings
from .db import session_scope


def get_session() -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on an error."""
    with session_scope() as session:
        yield session


def get_read_session() -> Iterator[Session]:
    """A transaction for a route that only reads (it never waits for SQLite's write lock)."""
    with session_scope(read_only=True) as session:
        yield session


# scope="function": commit before the response is sent, so a 201 means the job is stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
