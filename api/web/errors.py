"""One JSON shape for every error: {"error": {"code", "message", "fields": [{field, message}]}}."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import Send

from api.service.errors import (
    ExperimentNotFound,
    InvalidField,
    JobConflict,
    JobNotFound,
    KeyInUse,
    StorageFull,
    TooManyJobs,
    UploadNotFound,
)
from api.service.experiments.request import ExperimentSpec
from api.service.job_spec import ServiceJobSpec
from api.web.auth import TooManyRequests
from api.web.routes import experiments as experiment_routes
from api.web.schemas import ErrorBody, ErrorField, ErrorOut
from lsq.spec import describe_errors

log = logging.getLogger(__name__)
# The one code table: every error body's `code` comes from its status here, whether a route's
# exception handler or a middleware (which answers before any route) sends it.
CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    416: "range_not_satisfiable",
    422: "invalid",
    429: "too_many_requests",
    431: "too_large",
    500: "internal",
    503: "unavailable",
    507: "insufficient_storage",
}
# The service's domain errors and their statuses (their messages are the body's).
STATUSES: dict[type[Exception], int] = {
    JobNotFound: 404,
    ExperimentNotFound: 404,
    UploadNotFound: 404,
    JobConflict: 409,
    KeyInUse: 409,
    StorageFull: 507,
}


def error_body(status: int, message: str, fields: Iterable[ErrorField] = ()) -> ErrorOut:
    return ErrorOut(
        error=ErrorBody(code=CODES.get(status, "error"), message=message, fields=list(fields))
    )


def error_response(status: int, message: str, fields: Iterable[ErrorField] = ()) -> JSONResponse:
    """The error as a route answers it (from an exception handler)."""
    return JSONResponse(error_body(status, message, fields).model_dump(), status_code=status)


async def send_error(
    send: Send,
    status: int,
    message: str,
    fields: Iterable[ErrorField] = (),
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """The same error as a middleware answers it, straight onto the ASGI connection."""
    body = error_body(status, message, fields).model_dump_json().encode()
    length = str(len(body)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", length), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# Where FastAPI says a value came from; the field name alone is clearer to a client.
SOURCES = ("body", "query", "path", "header")


MAX_FIELDS = 20


def _without_source(error: dict) -> dict:
    """`training.epochs`, not `body.training.epochs`; malformed JSON is the body's fault."""
    loc = tuple(error["loc"])
    if error["type"] == "json_invalid":
        loc = ()
    elif len(loc) > 1 and loc[0] in SOURCES:
        loc = loc[1:]
    return {**error, "loc": loc}


def _header_name(name: str | int) -> str:
    """A header as it is sent: `Idempotency-Key`."""
    return "-".join(word.capitalize() for word in str(name).replace("_", "-").split("-"))


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The same presentation as `lsq run`: the field's dotted name, what it accepts, and
        # for an unknown key the accepted ones and the closest.
        errors = exc.errors()[:MAX_FIELDS]  # a body of 50,000 unknown keys is not 50,000 lines
        headers = [e for e in errors if e["loc"][0] == "header"]
        others = [_without_source(e) for e in errors if e["loc"][0] != "header"]
        described = [(_header_name(e["loc"][-1]), e["msg"]) for e in headers]
        route = getattr(request.scope.get("endpoint"), "__module__", "")
        root = ExperimentSpec if route == experiment_routes.__name__ else ServiceJobSpec
        described += describe_errors(others, root)  # an unknown key's accepted ones
        fields = [ErrorField(field=field, message=message) for field, message in described]
        names = ", ".join(dict.fromkeys(f.field for f in fields))
        return error_response(422, f"invalid request: {names}", fields)

    @app.exception_handler(InvalidField)
    async def _invalid_field(_: Request, exc: InvalidField) -> JSONResponse:
        return error_response(
            422, f"invalid request: {exc.field}", [ErrorField(field=exc.field, message=str(exc))]
        )

    async def _domain(_: Request, exc: Exception) -> JSONResponse:
        return error_response(STATUSES[type(exc)], str(exc))

    for kind in STATUSES:
        app.add_exception_handler(kind, _domain)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = allowed_methods(request)
        return response

    @app.exception_handler(TooManyRequests)
    async def _rate(_: Request, exc: TooManyRequests) -> JSONResponse:
        return _retry_later(str(exc), exc.retry_after)

    @app.exception_handler(TooManyJobs)
    async def _quota(_: Request, exc: TooManyJobs) -> JSONResponse:
        return _retry_later(f"{exc}; submit again when some have ended", QUOTA_RETRY_SECONDS)


QUOTA_RETRY_SECONDS = 60


def allowed_methods(request: Request) -> str:
    """Every method some route takes at this path: Starlette's 405 names only the first
    route's (GET /v1/jobs and POST /v1/jobs are two routes). HEAD wherever GET is."""
    routes = request.app.router.routes
    methods = [
        method
        for method in ("DELETE", "GET", "POST", "PUT", "PATCH")
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    ]
    return ", ".join(sorted([*methods, *(["HEAD"] if "GET" in methods else [])]))


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least one (0 would invite a retry at once)."""
    return str(max(1, math.ceil(seconds)))


def _retry_later(message: str, seconds: float) -> JSONResponse:
    response = error_response(429, message)
    response.headers["Retry-After"] = retry_after(seconds)
    return response
