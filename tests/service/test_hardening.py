"""The HTTP server as a hostile client meets it: floods of concurrent requests on both
backends, oversized and unfinished requests, forged proxy headers, the browser's security
headers, HEAD, and private database files. Real `lsq api` processes throughout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import bindparam, create_engine, text

from .conftest import bearer, make_token, tiny_spec
from .test_security import Api

pytestmark = pytest.mark.timeout(300)
FLOOD = 200


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend_api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Api]:  # fmt: skip
    """An API alone on the embedded default (SQLite, SQLite broker) or PostgreSQL + Redis."""
    data = tmp_path_factory.mktemp(f"hardening-{request.param}")
    urls = {}
    if request.param == "postgres":
        urls = {
            "DATABASE_URL": request.getfixturevalue("new_pg_database")(),
            "CELERY_BROKER_URL": request.getfixturevalue("redis_url"),
        }
    server = Api(data, **urls)
    yield server
    server.proc.stop()


def published(api: Api, job_ids: list[int]) -> bool:
    """Whether every job's message reached the broker (the API marks it so once sent)."""
    url = api.env.get("DATABASE_URL") or f"sqlite:///{api.data / 'lsq.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM jobs WHERE published_at IS NOT NULL AND id IN :ids")
            query = query.bindparams(bindparam("ids", expanding=True))
            return conn.execute(query, {"ids": job_ids}).scalar_one() == len(job_ids)
    finally:
        engine.dispose()


async def _at_once(url: str, requests: list[tuple[str, str, dict]]) -> list[tuple[int, Any]]:
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        answers = await asyncio.gather(
            *(client.request(method, path, **kwargs) for method, path, kwargs in requests)
        )
    return [(a.status_code, a.json() if a.request.method == "POST" else None) for a in answers]


def at_once(url: str, requests: list[tuple[str, str, dict]]) -> list[tuple[int, Any]]:
    """Send every request at once, each on its own connection: each status (and body of a
    POST)."""
    return asyncio.run(_at_once(url, requests))


# --------------------------------------------------------------------------- floods


def test_a_flood_on_every_route_leaves_no_trace(backend_api: Api) -> None:
    """The embedded broker once kept a database connection per concurrent readiness check:
    past 15, each check and each publish waited 30 s for one, for good."""
    token = bearer(make_token(backend_api.env))
    kinds = [
        ("GET", "/readyz", {}), ("GET", "/readyz", {}), ("GET", "/healthz", {}),
        ("GET", "/", {}), ("GET", "/static/app.js", {}), ("GET", "/v1/jobs", {"headers": token}),
        ("POST", "/v1/jobs", {"headers": token, "json": tiny_spec("flood")}),
    ]  # fmt: skip
    answers = at_once(backend_api.url, [kinds[i % len(kinds)] for i in range(FLOOD)])
    assert {code for code, _ in answers} <= {200, 201}, sorted(code for code, _ in answers)
    with httpx.Client(base_url=backend_api.url, headers=token, timeout=60) as client:
        job = client.post("/v1/jobs", json=tiny_spec("after-the-flood"))
        assert job.status_code == 201, job.text
        assert client.get("/readyz").status_code == 200
    posted = [body["id"] for code, body in answers if code == 201] + [job.json()["id"]]
    assert published(backend_api, posted), backend_api.proc.output()[-3000:]
    assert "not queued" not in backend_api.proc.output()
