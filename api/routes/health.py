"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..db import ping
from ..errors import error_response
from ..queue import ping_broker
from ..schemas import ErrorField, ErrorOut

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database and the broker are reachable",
    responses={503: {"model": ErrorOut}},
)
async def readyz() -> JSONResponse:
    problems = []
    for name, check in (("database", ping), ("broker", ping_broker)):
        try:
            await run_in_threadpool(check)
        except Exception as e:
            problems.append(ErrorField(field=name, message=f"{type(e).__name__}: {e}"[:500]))
    if problems:
        return error_response(503, "not ready: " + ", ".join(p.field for p in problems), problems)
    return JSONResponse({"status": "ready"})
