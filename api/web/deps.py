"""Dependencies of the routes, as Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from api.service.config import Settings, get_settings
from api.service.db import session_scope


def get_read_session() -> Iterator[Session]:
    """A transaction for a route that only reads (it never waits for SQLite's write lock).

    Routes that write open theirs with `session_scope()` in their own body instead: SQLite's
    write lock must never wait for the dependency teardown's commit, which needs a thread of
    the pool that the lock's waiters may all hold (a deadlock until the busy timeout)."""
    with session_scope(read_only=True) as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
