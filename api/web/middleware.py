"""ASGI middleware of the API: a bound on request bodies, and a last-resort 500 that keeps the
connection usable (Starlette's own re-raises, and uvicorn then drops the keep-alive connection).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.service.config import get_settings
from api.web.auth import (
    CHALLENGE,
    INVALID_TOKEN,
    MISSING_TOKEN,
    TooManyRequests,
    count_guess,
    guessing,
    valid,
)
from api.web.errors import retry_after, send_error
from api.web.schemas import ErrorField
from api.web.server import MAX_HEADER_BYTES, UPLOADS
from lsq.text import cut

log = logging.getLogger(__name__)


class BodyGuard:
    """401 for a /v1 request without a bearer token, before anything of its body is read (it
    counts against its address as an invalid token does: 429 past the rate). Else (but for an
    upload, which its route reads as it streams) 413 for a body over `max_bytes`, whether it
    says its length or streams: the body is read (up to the limit) before the app sees it.
    Then 422 for a JSON body that means two things (see `ambiguity`), found off the event
    loop."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self._parser: anyio.CapacityLimiter | None = None  # made in the loop: anyio needs one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not _needs_token(scope["path"]):
            # No route outside /v1 reads a body: nothing to bound or check here, and a check
            # would be work anyone could make the API do.
            return await self.app(scope, receive, send)
        token = _bearer(scope["headers"])
        if token is None or await _guessing_with_a_wrong_one(scope, token):
            # Refused before the body is read or parsed: without a valid token that work is
            # free to anyone, and its parse takes turns with everyone else's.
            return await _refuse(scope, send, MISSING_TOKEN if token is None else INVALID_TOKEN)
        if scope["method"] == "POST" and scope["path"] == UPLOADS:
            return await self.app(scope, receive, send)  # streamed, capped by its route
        too_large = f"request body over {self.max_bytes} bytes (LSQ_MAX_BODY_BYTES)"
        length = dict(scope["headers"]).get(b"content-length", b"0").strip()
        if not length.isdigit() or int(length) > self.max_bytes:
            return await send_error(send, 413, too_large)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await send_error(send, 413, too_large)
            more = message.get("more_body", False)
        # Every body, whatever its Content-Type says: FastAPI reads one without it as JSON,
        # and matches `Application/JSON` as `application/json`.
        if body and (problem := await self._ambiguity(bytes(body))):
            fields = [ErrorField(field="body", message=problem)]
            return await send_error(send, 422, "invalid request: body", fields)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # what follows the body: a disconnect
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _ambiguity(self, body: bytes) -> str | None:
        """`ambiguity` in a thread: parsing 256 KiB with a Python hook took the event loop for
        tens of milliseconds. One parse at a time, in a pool of its own: the GIL runs one
        anyway, and the shared pool stays free for sync routes (/healthz among them)."""
        if self._parser is None:
            self._parser = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(ambiguity, body, limiter=self._parser)


def _needs_token(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of the (first) Authorization header of the form api.web.auth reads: `Bearer
    <token>`; None for none."""
    value = next((v for k, v in headers if k == b"authorization"), b"")
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _guessing_with_a_wrong_one(scope: Scope, token: str) -> bool:
    """An address past its rate of invalid tokens has its token looked up before its body is
    read (a valid one goes on, bound by its own rate; api.web.auth)."""
    client = scope.get("client")
    if not guessing(client[0] if client else None, get_settings()):
        return False
    return not await anyio.to_thread.run_sync(valid, token)


async def _refuse(scope: Scope, send: Send, why: str) -> None:
    """api.web.auth's 401 for a missing or invalid token, or its 429 once the address has sent
    too many."""
    client = scope.get("client")
    try:
        count_guess(client[0] if client else None, get_settings())
    except TooManyRequests as e:
        retry = [(b"retry-after", retry_after(e.retry_after).encode())]
        return await send_error(send, 429, str(e), headers=retry)
    challenge = [(k.lower().encode(), v.encode()) for k, v in CHALLENGE.items()]
    await send_error(send, 401, why, headers=challenge)


class _Repeated(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Repeated(key)
        out[key] = value
    return out


def ambiguity(body: bytes) -> str | None:
    """What makes a JSON body mean two things: a key given twice in one object (the JSON RFC
    leaves which one counts to the reader), or half a UTF-16 surrogate pair in a string (no
    text holds it, and no database stores it); and what Python's JSON reader cannot read at
    all, which FastAPI answers with a 400 that names nothing. None for malformed JSON: the
    app says where."""
    try:
        data = json.loads(body, object_pairs_hook=_unique)
        json.dumps(data, ensure_ascii=False).encode()
    except _Repeated as e:
        return f"the key {cut(json.dumps(e.args[0]), 80)} is given twice in one object"
    except UnicodeEncodeError:
        return "a string holds half a UTF-16 surrogate pair (a lone \\ud800-\\udfff)"
    except json.JSONDecodeError:
        return None
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except RecursionError:
        return "arrays or objects nested too deeply to read"
    except ValueError:  # Python reads no integer of more than 4300 digits
        return "a number too long to read (over 4300 digits)"
    return None


class TrustedHosts:
    """400 for a Host header that is not one of this service's names: a page on another site
    whose name resolves to this machine (DNS rebinding) cannot talk to it. 400 for two Host
    headers, which two readers could read differently (RFC 9112 refuses them), and 431 past
    `max_headers` headers or `max_bytes` bytes of request line and headers."""

    def __init__(
        self,
        app: ASGIApp,
        hosts: list[str],
        max_headers: int = 100,
        max_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.app, self.hosts, self.max_headers = app, {h.lower() for h in hosts}, max_headers
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if len(scope["headers"]) > self.max_headers:
            message = f"more than {self.max_headers} request headers"
            return await send_error(send, 431, message)
        if _head_bytes(scope) > self.max_bytes:
            # h11 bounds only a request that arrives in pieces: one that came in a single read
            # reached the app whole, whatever its size.
            message = f"request line and headers over {self.max_bytes} bytes"
            return await send_error(send, 431, message)
        hosts = [v.decode("latin-1").lower() for k, v in scope["headers"] if k == b"host"]
        if len(hosts) > 1:
            return await send_error(send, 400, "more than one Host header")
        host = hosts[0] if hosts else ""
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host  # drop the port
        if "*" not in self.hosts and name not in self.hosts:
            return await send_error(send, 400, "unknown Host header; see LSQ_ALLOWED_HOSTS")
        await self.app(scope, receive, send)


def _head_bytes(scope: Scope) -> int:
    """About the size of a request's line and headers as sent (`name: value\\r\\n` each)."""
    line = len(scope["raw_path"]) + len(scope["query_string"]) + len(scope["method"])
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class HeadAsGet:
    """HEAD wherever GET is (FastAPI routes take GET only): the GET's status and headers, no
    body. A streamed body (a download) stops once the headers are out: the response is told
    the client has gone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        sent = anyio.Event()
        asked = False

        async def gone_once_sent() -> Message:
            nonlocal asked
            if not asked:  # the request: a HEAD has no body
                asked = True
                return await receive()
            await sent.wait()
            return {"type": "http.disconnect"}

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send(message)
            elif not sent.is_set():  # the first body message: end the response there
                sent.set()
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, gone_once_sent, headers_only)
        finally:  # the route the GET matched, for the request counts (api.web.metrics)
            scope["route"] = as_get.get("route")


class CrashGuard:
    """Any unhandled error becomes the one error shape with status 500, logged with its
    traceback, and the connection stays open for the client's next request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            await send_error(send, 500, f"internal error: {type(e).__name__}")
