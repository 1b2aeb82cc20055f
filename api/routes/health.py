"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..db import ping
from ..errors import error_response
from ..schemas import ErrorField, ErrorOut

router = APIRouter(tags=["health"])
BROKER_TIMEOUT = 3


@router.get("/healthz", summary="The API process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _broker_ping() -> None:
    from worker.app import celery_app

    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)
        # Declaring the queue counts its messages: a real round trip on every transport.
        conn.default_channel.queue_declare(queue=celery_app.conf.task_default_queue)


@router.get(
    "/readyz",
    summary="The database and the broker are reachable",
    responses={503: {"model": ErrorOut}},
)
async def readyz() -> JSONResponse:
    problems = []
    for name, check in (("database", ping), ("broker", _broker_ping)):
        try:
            await run_in_threadpool(check)
        except Exception as e:
            problems.append(ErrorField(field=name, message=f"{type(e).__name__}: {e}"[:500]))
    if problems:
        return error_response(503, "not ready: " + ", ".join(p.field for p in problems), problems)
    return JSONResponse({"status": "ready"})
