"""The FastAPI app, OpenAPI at /docs. Run: `lsq api` (api.web.server: the server's bounds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api.service.config import get_settings
from api.service.db import upgrade_database
from api.web import errors, metrics
from api.web.middleware import BodyGuard, CrashGuard, HeadAsGet, TrustedHosts
from api.web.routes import datasets, experiments, jobs, me, models, probes

STATIC = Path(__file__).parent / "static"  # the dashboard: plain HTML, CSS and JavaScript


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(upgrade_database)  # safe when a worker migrates at the same time
    yield


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="LSQ job service",
        summary="Quantize-and-evaluate jobs (Learned Step Size Quantization) over REST",
        version="1",
        lifespan=_lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI and ReDoc from a CDN, with inline script
        redoc_url=None,
    )
    errors.install(app)
    app.state.readiness = probes.Readiness()

    @app.get("/", include_in_schema=False)
    def _dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def _docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")  # Swagger UI, set up by static/docs.js

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # Swagger UI's files, from a package: no CDN, so /docs works offline and nothing loaded
    # from elsewhere runs beside the token the dashboard keeps.
    swagger = StaticFiles(packages=[("fastapi_offline", "static")])
    app.mount("/swagger-ui", swagger, name="swagger-ui")

    app.include_router(jobs.router)
    app.include_router(experiments.router)
    app.include_router(me.router)
    app.include_router(datasets.router)
    app.include_router(models.router)
    app.include_router(probes.router)
    # Outermost last. No cookies anywhere: a page on another site cannot act for a user, and
    # CORS stays closed unless LSQ_CORS_ORIGINS names the origins that may call (BodyGuard's
    # 413 and 422 pass through it, so such a page reads them).
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes)
    if origins := [o for o in settings.cors_origins.split(",") if o]:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Range", "If-Range"],
            expose_headers=["Content-Disposition", "Content-Range", "ETag", "Retry-After"],
        )
    app.add_middleware(TrustedHosts, hosts=[h for h in settings.allowed_hosts.split(",") if h])
    metrics.install(app)  # counts what every layer above answers
    app.add_middleware(CrashGuard)
    return app
