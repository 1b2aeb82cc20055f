"""The FastAPI app, OpenAPI at /docs. Run: `lsq api` or `uvicorn api.main:create_app --factory`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from . import errors
from .db import upgrade_database
from .routes import health, jobs


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(upgrade_database)  # safe when a worker migrates at the same time
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="LSQ job service",
        summary="Quantize-and-evaluate jobs (Learned Step Size Quantization) over REST",
        version="1",
        lifespan=_lifespan,
    )
    errors.install(app)

    @app.get("/", include_in_schema=False)
    def _home() -> RedirectResponse:
        return RedirectResponse("/docs")

    app.include_router(jobs.router)
    app.include_router(health.router)
    return app
