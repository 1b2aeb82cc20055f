"""One JSON shape for every error: {"error": {"code", "message", "fields": [{field, message}]}}."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lsq.spec import describe_errors

from .auth import TooManyRequests
from .experiments import ExperimentSpec
from .routes import experiments as experiment_routes
from .schemas import ErrorBody, ErrorField, ErrorOut
from .spec import ServiceJobSpec
from .store import (
    ExperimentNotFound,
    InvalidField,
    JobConflict,
    JobNotFound,
    KeyInUse,
    StorageFull,
    TooManyJobs,
)

log = logging.getLogger(__name__)
CODES = {
    401: "unauthorized",
    413: "too_large",
    429: "too_many_requests",
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    416: "range_not_satisfiable",
    422: "invalid",
    500: "internal",
    503: "unavailable",
    507: "insufficient_storage",
}


def error_response(status: int, message: str, fields: Iterable[ErrorField] = ()) -> JSONResponse:
    body = ErrorOut(
        error=ErrorBody(code=CODES.get(status, "error"), message=message, fields=list(fields))
    )
    return JSONResponse(body.model_dump(), status_code=status)


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

    @app.exception_handler(JobNotFound)
    @app.exception_handler(ExperimentNotFound)
    async def _not_found(_: Request, exc: LookupError) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(JobConflict)
    async def _conflict(_: Request, exc: JobConflict) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(KeyInUse)
    async def _key_in_use(_: Request, exc: KeyInUse) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(TooManyRequests)
    async def _rate(_: Request, exc: TooManyRequests) -> JSONResponse:
        return _retry_later(str(exc), exc.retry_after)

    @app.exception_handler(StorageFull)
    async def _storage(_: Request, exc: StorageFull) -> JSONResponse:
        return error_response(507, str(exc))

    @app.exception_handler(TooManyJobs)
    async def _quota(_: Request, exc: TooManyJobs) -> JSONResponse:
        return _retry_later(f"{exc}; submit again when some have ended", QUOTA_RETRY_SECONDS)


QUOTA_RETRY_SECONDS = 60


def _retry_later(message: str, seconds: float) -> JSONResponse:
    response = error_response(429, message)
    response.headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    return response
