"""How the API is served: uvicorn, with every bound a client could otherwise stretch. Every way
of starting the API (`lsq api`, `lsq serve`, the compose file and the image) comes here.

uvicorn on h11, not on httptools (what uvicorn[standard] picks by default): httptools takes a
header of any size (a 16 MB one grew the process by 16 MB), h11 keeps the request line and
headers within `h11_max_incomplete_event_size` and refuses two Host headers. uvicorn times out
only the idle time between requests, so a client sending a byte a second held its connection
for ever: `RequestDeadline` adds a deadline for the headers and body of each request, and for a
response stuck on a client that stopped reading (nothing timed that out). uvicorn's
connection limit is for all clients together: `ConnectionsPerAddress` keeps one client from
taking them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.service.config import Settings, get_settings
from api.web.auth import client_key

MAX_HEADER_BYTES = 16 << 10  # the request line and headers of one request
KEEP_ALIVE_SECONDS = 5  # an idle connection between two requests
# Sent with every response: no inline script or style, no framing (the dashboard's Cancel
# buttons), no content sniffing, no address in Referer. Plots are blob: and data: images.
SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),  # frame-ancestors for browsers without CSP 2
]


UPLOADS = "/v1/models"  # the one route whose body is a file (api.web.routes.models)


class RequestDeadline(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline: a request's headers and body must have arrived
    `seconds` after it began (when the connection opened, or the last response ended);
    otherwise the connection closes, with a 408 when part of a request came and no response
    has started. An upload's body (POST /v1/models) has `seconds` between two chunks instead.

    And the same deadline for sending: a response whose writing stays paused `seconds` (the
    client has stopped reading and every buffer between is full) ends with the connection
    reset. A download that sat unread held its connection for ever, and enough of them took
    every connection there is. A client reading on, however slowly, keeps it: each time its
    reading empties the buffer enough, writing resumes and the clock stops."""

    seconds: float = 20.0
    _timer: asyncio.TimerHandle | None = None
    _send_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow(None)
        # Data the kernel holds for a client that stopped reading (a response small enough
        # never to pause writing, left behind by a closed connection) is dropped after the
        # same deadline, with the connection: else a few hundred such sockets pin the host's
        # TCP memory, PostgreSQL's and Redis's connections included.
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            with contextlib.suppress(OSError):
                ms = int(self.seconds * 1000)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, ms)

    def data_received(self, data: bytes) -> None:
        before = self.conn.their_state
        super().data_received(data)
        if self._uploading():
            self._stop_timer()  # a model file may take minutes: the deadline is between chunks
        self._follow(before)

    def _uploading(self) -> bool:
        """Whether the body coming is a model file's (POST /v1/models, which caps its size)."""
        scope = self.scope
        return (
            self.conn.their_state is h11.SEND_BODY
            and scope is not None
            and (scope["method"], scope["path"]) == ("POST", UPLOADS)
        )

    def on_response_complete(self) -> None:
        before = self.conn.their_state
        super().on_response_complete()
        self._follow(before)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._stop_send_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.seconds, self._send_stalled)

    def resume_writing(self) -> None:
        self._stop_send_timer()
        super().resume_writing()

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_stalled(self) -> None:
        """Reset the connection: close() would wait for the unsent data to go, which is what
        never happens, and without SO_LINGER 0 the kernel would go on holding it (and the
        connection) for minutes after."""
        self._send_timer = None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _follow(self, before: object) -> None:
        """Start the clock when a request begins; stop it once the whole request is in."""
        waiting = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
        if not waiting or (self.conn.their_state is h11.IDLE and before is not h11.IDLE):
            self._stop_timer()  # all in (or the connection is over), or a new request begins
        if waiting and self._timer is None:
            self._timer = self.loop.call_later(self.seconds, self._expire)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        try:
            # Part of a request came, and no answer went: say why (an idle one just closes).
            if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:
                headers = [(b"connection", b"close"), (b"content-length", b"0")]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS]
                response = h11.Response(status_code=408, headers=headers, reason=b"Request Timeout")
                self.transport.write(self.conn.send(response) + self.conn.send(h11.EndOfMessage()))
        finally:
            self.transport.close()


class ConnectionsPerAddress(RequestDeadline):
    """At most `per_address` open connections from one client address (an IPv6 one: its /64):
    past them a new connection is closed at once, before any request. Otherwise one client's
    idle sockets filled uvicorn's limit_concurrency and everyone else got 503. The `proxies`
    are exempt: every client behind them shares their address."""

    per_address: int = 100
    proxies: _TrustedHosts = _TrustedHosts("")  # uvicorn's own reading of FORWARDED_ALLOW_IPS
    open_by_address: ClassVar[Counter[str]]  # one per server: see uvicorn_config
    _counted_as: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        if host is None or host in self.proxies:
            return
        key = client_key(host)
        if self.open_by_address[key] >= self.per_address:
            # No answer and no log line: a flood of them would fill the log.
            self.transport.close()
            return
        self.open_by_address[key] += 1
        self._counted_as = key

    def connection_lost(self, exc: Exception | None) -> None:
        if (key := self._counted_as) is not None:
            self._counted_as = None
            self.open_by_address[key] -= 1
            if self.open_by_address[key] <= 0:
                del self.open_by_address[key]  # only addresses with connections take memory
        super().connection_lost(exc)


def uvicorn_config(settings: Settings, **options: Any) -> dict[str, Any]:
    """uvicorn's settings for the API; `options` adds host, port, logging..."""
    bounds = {
        "seconds": settings.request_timeout_seconds,
        "per_address": settings.connections_per_address,
        "proxies": _TrustedHosts(settings.forwarded_allow_ips),
        "open_by_address": Counter(),
    }
    return dict(
        http=type("BoundedH11Protocol", (ConnectionsPerAddress,), bounds),
        ws="none",  # no WebSocket route: an Upgrade request is a plain HTTP one
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        limit_concurrency=settings.max_connections,
        # Proxy headers only from the proxies named: anyone else could forge an address
        # (the invalid-token limit counts per address) and fill the access log with them.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips,
        headers=SECURITY_HEADERS,
        server_header=False,
        **options,
    )


def run(**options: Any) -> None:
    """Serve the API (`api.web.app:create_app`) until stopped."""
    uvicorn.run("api.web.app:create_app", factory=True, **uvicorn_config(get_settings(), **options))
