"""API tokens: `Authorization: Bearer <token>` names an owner. Only a token's hash is stored."""

from __future__ import annotations

import hashlib
import os
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.service.config import Settings
from api.service.db import session_scope
from api.service.models import Token, utcnow

PREFIX = "lsq_"
LOCAL_OWNER = "local"  # the owner of the token `lsq serve` makes for its own machine


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(session: Session, owner: str) -> tuple[Token, str]:
    """A new token for `owner`; the plain token is returned once and never stored."""
    plain = PREFIX + secrets.token_urlsafe(32)
    token = Token(owner=owner, hash=digest(plain))
    session.add(token)
    session.flush()
    return token, plain


def owner_of(session: Session, plain: str) -> str | None:
    """The owner of a valid (known, not revoked) token."""
    query = select(Token.owner).where(Token.hash == digest(plain), Token.revoked_at.is_(None))
    return session.scalar(query)


def revoke(session: Session, token_id: int) -> bool:
    token = session.get(Token, token_id)
    if token is None or token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    return True


def all_tokens(session: Session) -> list[Token]:
    return list(session.scalars(select(Token).order_by(Token.id)))


def local_token(settings: Settings) -> tuple[str, bool]:
    """This machine's token for the embedded default: the one saved in LSQ_DATA_DIR/token if it
    is still valid, else a new one saved there (readable by this user only). True if new."""
    path = settings.token_file
    saved = path.read_text().strip() if path.is_file() else ""
    with session_scope() as session:
        if saved and owner_of(session, saved):
            return saved, False
        _, plain = create(session, LOCAL_OWNER)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(plain + "\n")
    return plain, True


def client_token(settings: Settings) -> str | None:
    """The token the CLI sends: LSQ_TOKEN, else the one `lsq serve` saved on this machine."""
    if settings.token:
        return settings.token
    path = settings.token_file
    return path.read_text().strip() if path.is_file() else None
