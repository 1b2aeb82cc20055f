"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import math
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.service.db import ping
from api.service.queue import ping_broker
from api.web.errors import error_response
from api.web.schemas import ErrorField, ErrorOut

router = APIRouter(tags=["probes"])
# How long one readiness check answers for: a flood of /readyz costs a check a second.
READY_SECONDS = 1.0


class Readiness:
    """The last check's problems, reused for READY_SECONDS. One check runs at a time; requests
    that come meanwhile wait for its result without holding a thread (one app's, one loop)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._checked_at = -math.inf
        self._problems: list[ErrorField] = []

    async def problems(self) -> list[ErrorField]:
        async with self._lock:
            if time.monotonic() - self._checked_at >= READY_SECONDS:
                self._problems = await run_in_threadpool(_check)
                self._checked_at = time.monotonic()
            return self._problems


def _check() -> list[ErrorField]:
    problems = []
    for name, check in (("database", ping), ("broker", ping_broker)):
        try:
            check()
        except Exception as e:
            problems.append(ErrorField(field=name, message=f"{type(e).__name__}: {e}"[:500]))
    return problems


@router.get("/healthz", summary="The API process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database and the broker are reachable (checked at most once a second)",
    responses={503: {"model": ErrorOut}},
)
async def readyz(request: Request) -> JSONResponse:
    if problems := await request.app.state.readiness.problems():
        return error_response(503, "not ready: " + ", ".join(p.field for p in problems), problems)
    return JSONResponse({"status": "ready"})
