"""GET /metrics in Prometheus's text format: the store's gauges (api.service.metrics) and this
API process's requests, by route template and status, with their latency. Open on the loopback,
or to the operator's LSQ_METRICS_TOKEN from elsewhere; otherwise a 404, as if absent."""

from __future__ import annotations

import hmac
import ipaddress
import time

from fastapi import FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.service.config import get_settings
from api.service.metrics import StoreCollector
from api.web.auth import count_guess


class RequestMetrics:
    """Counts every HTTP request by route template (never the raw path: ids stay out), method
    and status, and times it."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "lsq_http_requests", "HTTP requests", ["route", "method", "status"], registry=registry
        )
        self.seconds = Histogram(
            "lsq_http_request_seconds", "HTTP request latency", ["route"], registry=registry
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            matched = scope.get("route")  # a mount (/static) sets its root_path instead
            route = getattr(matched, "path", None) or scope.get("root_path") or "unmatched"
            method = scope.get("method", "") if scope.get("method") in METHODS else "other"
            self.requests.labels(route, method, str(status)).inc()
            self.seconds.labels(route).observe(time.perf_counter() - started)


METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def install(app: FastAPI) -> None:
    """The registry, the request counter (outermost but one: it sees every answer) and the
    route."""
    registry = CollectorRegistry()
    registry.register(StoreCollector())
    app.add_middleware(RequestMetrics, registry=registry)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if not _may_read(request):
            raise HTTPException(404)  # the very answer of a path that does not exist
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _may_read(request: Request) -> bool:
    """The operator's token, or the loopback; a wrong token counts against its address as a
    wrong /v1 token does (429 past the rate)."""
    settings = get_settings()
    host = request.client.host if request.client else None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if given.strip() and scheme.lower() == "bearer":
        expected = settings.metrics_token.encode()
        if expected and hmac.compare_digest(given.strip().encode(), expected):
            return True
        count_guess(host, settings)
    return _loopback(host)


def _loopback(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
