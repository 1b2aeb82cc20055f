"""Idempotency-Keys: a repeated request (same owner, key and body) finds what the first one
made instead of making it again."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from api.service.db import insert_for
from api.service.errors import InvalidField, KeyInUse
from api.service.models import IdempotencyKey, Job, utcnow

# An experiment's Idempotency-Key is stored after this prefix. A header key cannot hold a
# space, so no job's key equals it (migration 0010 moved keys stored under "experiment:").
EXPERIMENT_KEY = "experiment "


def digest(body: dict[str, Any]) -> str:
    """What an Idempotency-Key's request is compared by: its JSON, keys sorted."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def bind_key(session: Session, owner: str, key: str, job_id: int) -> None:
    """The key now names `job_id`: a repeated request finds it."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
        .values(job_id=job_id)
    )


def job_of_key(
    session: Session, owner: str, key: str, body_hash: str, expiry: timedelta
) -> Job | None:
    """Claim `key` for a new job (None), or return the job an earlier request made with it."""
    now = utcnow()
    session.execute(  # an expired key is forgotten
        delete(IdempotencyKey).where(
            IdempotencyKey.owner == owner,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < now - expiry,
        )
    )
    insert = insert_for(session)(IdempotencyKey).values(
        owner=owner, key=key, body_hash=body_hash, created_at=now
    )
    # A concurrent first request holds the row until it commits; this waits for it.
    inserted = insert.on_conflict_do_nothing().returning(IdempotencyKey.key)
    if session.execute(inserted).scalar() is not None:
        return None
    row = session.get(IdempotencyKey, (owner, key), populate_existing=True)
    if row is None or row.job_id is None:
        raise KeyInUse("a request with this Idempotency-Key is still being handled; retry")
    if row.body_hash != body_hash:
        raise InvalidField(
            "Idempotency-Key", "already used with a different body; use a new key for a new job"
        )
    return session.get(Job, row.job_id)
