"""Who is calling: every /v1 request carries `Authorization: Bearer <token>` (api.service.tokens);
each token may make `LSQ_REQUESTS_PER_SECOND` requests a second (bursts of LSQ_REQUEST_BURST), and
each client address as many without a valid token (none, or one not valid): past that, these get
429 while a valid one is still let through (bound only by its own rate)."""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.service import tokens
from api.service.config import Settings, get_settings
from api.service.db import session_scope
from api.web.deps import ReadSessionDep

_bearer = HTTPBearer(auto_error=False, description="A token from `lsq token create OWNER`")


class TooManyRequests(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many requests; retry in {math.ceil(retry_after)} s")
        self.retry_after = retry_after


class RateLimiter:
    """A token bucket per key, in this process (each API process counts its own). At most
    `keys` buckets: past them the least recently used is forgotten (it was idle longest)."""

    def __init__(self, keys: int = 10_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key: (level, at)
        self._keys = keys
        self._lock = threading.Lock()

    def _level(self, key: str, rate: float, burst: int, now: float) -> float:
        level, at = self._buckets.get(key, (float(burst), now))
        return min(float(burst), level + (now - at) * rate)

    def spent(self, key: str, rate: float, burst: int) -> bool:
        """Whether `key` has no request left (taking none)."""
        with self._lock:
            return self._level(key, rate, burst, time.monotonic()) < 1

    def take(self, key: str, rate: float, burst: int) -> None:
        """Count a request of `key`; 429 when it has none left."""
        now = time.monotonic()
        with self._lock:
            level = self._level(key, rate, burst, now)
            self._buckets[key] = (level - (level >= 1), now)
            self._buckets.move_to_end(key)
            if len(self._buckets) > self._keys:
                self._buckets.popitem(last=False)
        if level < 1:
            raise TooManyRequests((1 - level) / rate)


LIMITER = RateLimiter()  # per valid token
GUESSES = RateLimiter()  # invalid-token requests, per client address
CHALLENGE = {"WWW-Authenticate": "Bearer"}


MISSING_TOKEN = "missing token: send Authorization: Bearer <token>"
INVALID_TOKEN = "invalid or revoked token"


def client_key(host: str | None) -> str:
    """A client's address as limits count it; an IPv6 one by its /64 (what one host is usually
    given)."""
    host = host or "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6 and address.ipv4_mapped:  # a dual-stack socket's IPv4 client
        return str(address.ipv4_mapped)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


def _address(request: Request) -> str:
    return client_key(request.client.host if request.client else None)


def count_guess(host: str | None, settings: Settings) -> None:
    """Count a request without a valid token against its client's address: TooManyRequests
    past LSQ_REQUESTS_PER_SECOND of them (bursts of LSQ_REQUEST_BURST)."""
    GUESSES.take(client_key(host), settings.requests_per_second, settings.request_burst)


def guessing(host: str | None, settings: Settings) -> bool:
    """Whether the address has sent as many invalid tokens as it may for now."""
    rate, burst = settings.requests_per_second, settings.request_burst
    return GUESSES.spent(client_key(host), rate, burst)


def valid(plain: str) -> bool:
    """Whether `plain` is a known, unrevoked token (its own short read session)."""
    if len(plain) > 200:
        return False
    with session_scope(read_only=True) as session:
        return tokens.owner_of(session, plain) is not None


def current_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: Annotated[Settings, Depends(get_settings)],
    session: ReadSessionDep,
) -> str:
    """The owner of the request's token; 401 without a valid one, 429 past its rate (an invalid
    one: past its address's rate of invalid tokens). The token is read in the request's read
    session, which a read route then uses too."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401, MISSING_TOKEN, headers=CHALLENGE
        )  # api.web.middleware answers first
    plain = credentials.credentials
    owner = None if len(plain) > 200 else tokens.owner_of(session, plain)  # an indexed lookup
    if owner is None:
        # Failures are counted per address, and only failures: a guesser past its rate waits
        # (429), while the valid tokens of others at the same address are not held up by it.
        count_guess(request.client.host if request.client else None, settings)
        raise HTTPException(401, INVALID_TOKEN, headers=CHALLENGE)
    if request.method not in ("GET", "HEAD"):
        # A write route opens its own session: hand this one's connection back now, not
        # after the route (under load the pool would be held by requests still waiting).
        session.commit()
    LIMITER.take(tokens.digest(plain), settings.requests_per_second, settings.request_burst)
    return owner


OwnerDep = Annotated[str, Depends(current_owner)]
