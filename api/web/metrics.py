"""GET /metrics in Prometheus's text format: the store's gauges (api.service.metrics) and this
API process's requests, by route template and status, with their latency. Open on the loopback,
or to the operator's LSQ_METRICS_TOKEN from elsewhere; otherwise a 404, as if absent."""

from __future__ import annotations

import hmac
import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.service.config import get_settings
from api.service.metrics import StoreCollector
from api.web.errors import error_response

LOOPBACK = {"127.0.0.1", "::1"}


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
            matched = scope.get("route")
            route = getattr(matched, "path", None) or "unmatched"
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
            return error_response(404, "not found")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _may_read(request: Request) -> bool:
    token = get_settings().metrics_token
    given = request.headers.get("authorization", "")
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return True
    return request.client is not None and request.client.host in LOOPBACK
