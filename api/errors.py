"""One JSON shape for every error: {"error": {"code", "message", "fields": [{field, message}]}}."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lsq.spec import describe_errors

from .schemas import ErrorBody, ErrorField, ErrorOut
from .spec import ServiceJobSpec
from .store import InvalidField, JobConflict, JobNotFound

log = logging.getLogger(__name__)
CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


def error_response(status: int, message: str, fields: Iterable[ErrorField] = ()) -> JSONResponse:
    body = ErrorOut(
        error=ErrorBody(code=CODES.get(status, "error"), message=message, fields=list(fields))
    )
    return JSONResponse(body.model_dump(), status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The same presentation as `lsq run`: the field's dotted name, what it accepts, and
        # for an unknown key the accepted ones and the closest (only bodies are job specs).
        described = describe_errors(exc.errors(), ServiceJobSpec)
        fields = [ErrorField(field=field, message=message) for field, message in described]
        names = ", ".join(dict.fromkeys(f.field for f in fields))
        return error_response(422, f"invalid request: {names}", fields)

    @app.exception_handler(InvalidField)
    async def _invalid_field(_: Request, exc: InvalidField) -> JSONResponse:
        return error_response(
            422, f"invalid request: {exc.field}", [ErrorField(field=exc.field, message=str(exc))]
        )

    @app.exception_handler(JobNotFound)
    async def _not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(JobConflict)
    async def _conflict(_: Request, exc: JobConflict) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")
