"""Who is calling: every /v1 request carries `Authorization: Bearer <token>` (see api.tokens);
each token may make `LSQ_REQUESTS_PER_SECOND` requests a second (bursts of LSQ_REQUEST_BURST), and
each client address as many with a token that is not valid."""

from __future__ import annotations

import math
import threading
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from . import tokens
from .config import Settings, get_settings
from .deps import ReadSessionDep

_bearer = HTTPBearer(auto_error=False, description="A token from `lsq token create OWNER`")


class TooManyRequests(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many requests; retry in {math.ceil(retry_after)} s")
        self.retry_after = retry_after


class RateLimiter:
    """A token bucket per API token, in this process (each API process counts its own)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # token hash: (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: int) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > 10_000:  # forget idle callers rather than grow
                self._buckets.clear()
            level, at = self._buckets.get(key, (float(burst), now))
            level = min(float(burst), level + (now - at) * rate)
            if level < 1:
                self._buckets[key] = (level, now)
                raise TooManyRequests((1 - level) / rate)
            self._buckets[key] = (level - 1, now)


LIMITER = RateLimiter()
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def current_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: Annotated[Settings, Depends(get_settings)],
    session: ReadSessionDep,
) -> str:
    """The owner of the request's token; 401 without a valid one, 429 past its rate. The
    token is read in the request's read session, which a read route then uses too."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401, "missing token: send Authorization: Bearer <token>", headers=CHALLENGE
        )
    plain = credentials.credentials
    if len(plain) > 200:
        owner = None
    else:
        owner = tokens.owner_of(session, plain)
        if request.method not in ("GET", "HEAD"):
            # A write route opens its own session: hand this one's connection back now, not
            # after the route (under load the pool would be held by requests still waiting).
            session.commit()
    if owner is None:
        # Guesses cost a lookup each: an address gets as many a second as a token's requests.
        guesser = f"failed from {request.client.host if request.client else '?'}"
        LIMITER.take(guesser, settings.requests_per_second, settings.request_burst)
        raise HTTPException(401, "invalid or revoked token", headers=CHALLENGE)
    LIMITER.take(tokens.digest(plain), settings.requests_per_second, settings.request_burst)
    return owner


OwnerDep = Annotated[str, Depends(current_owner)]
