"""The HTTP server as a hostile client meets it: floods of concurrent requests on both
backends, oversized and unfinished requests, forged proxy headers, the browser's security
headers, HEAD, and private database files. Real `lsq api` processes throughout."""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import bindparam, create_engine, text

from .conftest import (
    Proc,
    bearer,
    free_port,
    job_folder_name,
    make_token,
    service_env,
    tiny_spec,
)
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
    server = Api(data, **urls, LSQ_MAX_CONNECTIONS_PER_ADDRESS=str(FLOOD))  # all from 127.0.0.1
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


# ------------------------------------------------------------------ what a request may hold


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An embedded API whose requests must arrive within 2 s; FLOOD connections from one
    address."""
    data = tmp_path_factory.mktemp("hardening")
    server = Api(data, LSQ_REQUEST_TIMEOUT_SECONDS="2", LSQ_MAX_CONNECTIONS_PER_ADDRESS=str(FLOOD))
    yield server
    server.proc.stop()


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def answer_then_close(sock: socket.socket, within: float = 30) -> bytes:
    """What the server sends before it closes the connection; fails if it keeps it open."""
    received, deadline = b"", time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not (chunk := sock.recv(65536)):
                return received
            received += chunk
    except ConnectionResetError:
        return received
    except TimeoutError:
        pass
    pytest.fail(f"the server kept the connection open {within} s; it sent {received[:200]!r}")


def raw_request(api: Api, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", int(api.url.rsplit(":", 1)[1])), 30) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):  # refused before it was all sent
            pass
        return answer_then_close(sock)


def test_oversized_headers_are_refused_and_cost_no_memory(api: Api) -> None:
    """httptools took a header of any size: 20 unfinished 16 MB ones grew the API by 380 MB."""
    before = rss_bytes(api.proc.pid)
    header = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (4 << 20)
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: raw_request(api, header), range(20)))
    assert all(a == b"" or a.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")) for a in answers)
    assert rss_bytes(api.proc.pid) - before < 16 << 20
    many = b"".join(b"X-%d: a\r\n" % i for i in range(101))
    answer = raw_request(api, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + CLOSE)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert httpx.get(f"{api.url}/healthz").status_code == 200


def test_headers_over_the_limit_in_one_read_are_refused(api: Api) -> None:
    """h11 bounds only headers still arriving: 100 KiB of them sent at once got a 200."""
    big = b"X-A: " + b"a" * (100 << 10) + b"\r\n"
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + big + CLOSE
    with socket.create_connection(("127.0.0.1", port_of(api)), 30) as sock:
        sock.sendall(request)  # one write: on the loopback, mostly one read for the server
        answer = answer_then_close(sock)
    # 431 from the app; 400 from h11 should the server have read it in pieces
    assert answer.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 ")), answer[:100]


def port_of(api: Api) -> int:
    return int(api.url.rsplit(":", 1)[1])


CLOSE = b"Connection: close\r\n\r\n"
SLOW = {  # what a slow client sends first, then again every half second
    "nothing": (b"", b""),
    "headers": (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: 1\r\n"),
    "body": (b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999\r\n\r\n{", b" "),
}


async def _slow_client(port: int, first: bytes, drip: bytes) -> bytes:
    """Send `first`, then `drip` every half second until the server closes; what it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    received = b""
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                writer.write(drip)
                continue
            if not chunk:
                return received
            received += chunk
    except ConnectionResetError:
        return received
    finally:
        writer.close()


async def _slow_clients(port: int, count: int, first: bytes, drip: bytes) -> list[bytes]:
    clients = (_slow_client(port, first, drip) for _ in range(count))
    return await asyncio.wait_for(asyncio.gather(*clients), 30)


@pytest.mark.parametrize("sends", SLOW)
def test_a_slow_or_idle_connection_is_closed_at_the_deadline(api: Api, sends: str) -> None:
    """uvicorn timed out only the idle time between requests: 200 clients sending one byte
    a second held their connections for ever."""
    port = int(api.url.rsplit(":", 1)[1])
    answers = asyncio.run(_slow_clients(port, FLOOD, *SLOW[sends]))  # fails on the 30 s timeout
    # A 408 for a request begun; an idle connection just closes, as does one whose body the app
    # was reading (a response may have begun).
    expected = b"HTTP/1.1 408 " if sends == "headers" else b""
    assert all(a.startswith(expected) for a in answers), {a[:40] for a in answers}
    assert httpx.get(f"{api.url}/healthz").status_code == 200


def connect(api: Api, source: str = "127.0.0.1") -> socket.socket:
    """A connection to the API from `source` (any 127/8 address is the loopback on Linux)."""
    sock = socket.socket()
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port_of(api)))
    return sock


def healthz(sock: socket.socket) -> bytes:
    """The answer to GET /healthz on `sock`: b"" when the server closed it unanswered."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + CLOSE)
    return answer_then_close(sock)


def test_one_address_cannot_hold_every_connection(tmp_path: Path) -> None:
    """60 idle sockets from one address (LSQ_MAX_CONNECTIONS) got every other client a 503
    until the request deadline, and reconnecting kept the service down."""
    bounds = {"LSQ_MAX_CONNECTIONS": "6", "LSQ_MAX_CONNECTIONS_PER_ADDRESS": "4"}
    server = Api(tmp_path, **bounds, LSQ_REQUEST_TIMEOUT_SECONDS="120")  # idle ones stay
    try:
        held = [connect(server) for _ in range(4)]  # accepted in order: these count first
        past_the_cap = [healthz(connect(server)) for _ in range(3)]
        other_client = healthz(connect(server, "127.0.0.2"))
        for sock in held:
            sock.close()
        again = b""
        for _ in range(50):  # until the server has seen them go
            if (again := healthz(connect(server))).startswith(b"HTTP/1.1 200 "):
                break
            time.sleep(0.1)
    finally:
        server.proc.stop()
    assert past_the_cap == [b""] * 3, [a[:40] for a in past_the_cap]
    assert other_client.startswith(b"HTTP/1.1 200 "), other_client[:100]
    assert again.startswith(b"HTTP/1.1 200 "), again[:100]
    # Every client behind a proxy named in FORWARDED_ALLOW_IPS comes from its address: exempt.
    (data := tmp_path / "proxied").mkdir()
    proxied = Api(data, LSQ_MAX_CONNECTIONS_PER_ADDRESS="2", FORWARDED_ALLOW_IPS="127.0.0.1")
    try:
        held = [connect(proxied) for _ in range(4)]
        assert healthz(connect(proxied)).startswith(b"HTTP/1.1 200 ")
    finally:
        proxied.proc.stop()


def test_an_ipv4_client_of_a_dual_stack_socket_counts_as_its_ipv4_address() -> None:
    """Counted by the /64 of ::ffff:a.b.c.d, every IPv4 client shared one bucket."""
    from api.web.auth import client_key

    assert client_key("::ffff:203.0.113.7") == "203.0.113.7" != client_key("::ffff:203.0.113.8")


def download(api: Api, path: str, token: str, buffer: int | None = None) -> socket.socket:
    """A GET of `path`, from a client whose receive buffer holds `buffer` bytes (None: the
    system's); nothing read yet."""
    sock = socket.socket()
    if buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)  # before connect
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port_of(api)))
    sock.sendall(
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n%s"
        % (path.encode(), token.encode(), CLOSE)
    )
    return sock


def hung_up(sock: socket.socket, within: float = 30) -> bool:
    """Whether the server ends the connection (reset, or closed) within `within` seconds,
    while nothing is read from it."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)  # POLLERR and POLLHUP come unasked
    return bool(poller.poll(within * 1000))


def read_all(sock: socket.socket, pause: float = 0, within: float = 120) -> bytes:
    """Everything until the server closes, 16 KiB at most at a time, `pause` seconds after
    each."""
    received, deadline = bytearray(), time.monotonic() + within
    with contextlib.suppress(ConnectionResetError):
        while time.monotonic() < deadline and (chunk := sock.recv(16 << 10)):
            received += chunk
            time.sleep(pause)
    return bytes(received)


def test_a_download_never_read_loses_its_connection(api: Api) -> None:
    """Nothing timed out a response stuck writing: 62 unread downloads of one token held every
    connection, and everyone else got 503 for as long as they liked."""
    token = make_token(api.env)
    with httpx.Client(base_url=api.url, headers=bearer(token), timeout=30) as c:
        job = c.post("/v1/jobs", json=tiny_spec("unread")).json()["id"]
    folder = api.data / "artifacts" / "jobs" / job_folder_name(api.data, job)
    folder.mkdir(parents=True)
    with (folder / "model.onnx").open("wb") as f:
        f.truncate(64 << 20)  # sparse: far more than every buffer on the way holds
    # 8 MiB: the server's socket alone takes 4 MiB on the loopback before writing pauses
    (folder / "model.pt").write_bytes(bytes(range(256)) * (8 << 12))
    with download(api, f"/v1/jobs/{job}/artifacts/model.onnx", token, 4096) as unread:
        assert hung_up(unread)  # after the deadline (2 s) with its writing paused
        assert len(read_all(unread)) < 64 << 20  # what the buffers held, then the end
    # A reader slower than the server writes (16 KiB, then 10 ms of sleep: 5 s or more for
    # the file), for longer than the deadline, but steady: never paused that long, it gets
    # everything.
    with download(api, f"/v1/jobs/{job}/artifacts/model.pt", token) as slow:
        answer = read_all(slow, pause=0.01)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == (folder / "model.pt").read_bytes()


def test_forwarded_for_is_believed_only_from_the_proxies_named(tmp_path: Path) -> None:
    """uvicorn believes X-Forwarded-For from the loopback by default: 300 guessed tokens, each
    from a forged address, never met the guessing limit, and the forgeries filled the log."""
    limits = {"LSQ_REQUESTS_PER_SECOND": "1", "LSQ_REQUEST_BURST": "5"}
    for proxies in ("", "127.0.0.1"):
        (data := tmp_path / (proxies or "direct")).mkdir()
        proxy = {"FORWARDED_ALLOW_IPS": proxies} if proxies else {}  # the default: unset
        server = Api(data, **proxy, **limits)
        try:
            codes = [
                httpx.get(f"{server.url}/v1/jobs", headers={
                    **bearer("lsq_guess"), "X-Forwarded-For": f"203.0.113.{i}",
                }).status_code
                for i in range(8)
            ]  # fmt: skip
            log = server.proc.output()
        finally:
            server.proc.stop()
        if proxies:  # behind the proxy named: each forwarded address counts on its own
            assert codes == [401] * 8 and "203.0.113.7:" in log
        else:  # the connection's address counts, whatever the header says
            assert codes[:5] == [401] * 5 and 429 in codes[5:], codes
            assert "203.0.113." not in log


def test_requests_without_a_token_count_as_guesses(tmp_path: Path) -> None:
    """Only invalid tokens were counted: POSTs with no token at all were never limited, and
    each had its 256 KiB body read and parsed on the event loop first."""
    server = Api(tmp_path, LSQ_REQUESTS_PER_SECOND="1", LSQ_REQUEST_BURST="5")
    try:
        body = {"name": "x" * (200 << 10)}
        codes = [httpx.post(f"{server.url}/v1/jobs", json=body).status_code for _ in range(8)]
        token = bearer(make_token(server.env))  # another client at the same address
        assert httpx.get(f"{server.url}/v1/jobs", headers=token).status_code == 200
    finally:
        server.proc.stop()
    assert codes[:5] == [401] * 5 and 429 in codes[5:], codes


def test_the_body_of_a_request_without_a_token_is_never_read(api: Api) -> None:
    """The 401 comes on the headers alone: the 200,000 bytes announced are never sent."""
    request = b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port_of(api)), 30) as sock:
        sock.sendall(request)
        answer = answer_then_close(sock)  # the request deadline ends the connection
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:100]
    assert b"\r\nwww-authenticate: bearer\r\n" in answer.lower()


def test_a_guessing_address_has_its_token_checked_before_its_body_is_read(
    tmp_path: Path,
) -> None:
    """Past its rate of invalid tokens, an address's POST with a wrong token is refused on its
    headers (its body used to be read and parsed first: work anyone could make the API do);
    a right token from it still goes on. No route outside /v1 has its body checked at all."""
    server = Api(tmp_path, LSQ_REQUESTS_PER_SECOND="1", LSQ_REQUEST_BURST="3")
    wrong = b"Authorization: Bearer lsq_wrong\r\n"
    try:
        for _ in range(3):  # the address's burst of invalid tokens
            assert (
                httpx.get(f"{server.url}/v1/jobs", headers=bearer("lsq_wrong")).status_code == 401
            )
        request = (b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + wrong
                   + b"Content-Length: 200000\r\n\r\n")  # fmt: skip
        with socket.create_connection(("127.0.0.1", port_of(server)), 30) as sock:
            sock.sendall(request)
            answer = answer_then_close(sock)
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:100]
        token = bearer(make_token(server.env))
        assert httpx.post(f"{server.url}/v1/jobs", headers=token, json={}).status_code == 422
        twice = b'{"a": 1, "a": 2}'  # a body the check refuses where it runs
        assert httpx.post(f"{server.url}/healthz", content=twice).status_code == 405
    finally:
        server.proc.stop()


# ------------------------------------------------------------------------------ browsers

STATIC = Path(__file__).resolve().parents[2] / "api" / "web" / "static"


def test_every_response_carries_the_security_headers(api: Api) -> None:
    """Without them the dashboard could be framed and its Cancel buttons clickjacked."""
    for path in ("/", "/docs", "/v1/jobs", "/static/app.js", "/swagger-ui/swagger-ui.css",
                 "/openapi.json", "/no-such-page"):  # fmt: skip
        headers = httpx.get(api.url + path).headers
        policy = headers["content-security-policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path


def test_the_pages_hold_no_inline_script_or_style_and_load_nothing_from_elsewhere(
    api: Api,
) -> None:
    """What the policy would refuse (tests/service/test_dashboard.py runs them in a browser)."""
    for page in ("/", "/docs"):
        html = httpx.get(api.url + page).text
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.DOTALL)
        assert scripts and all(re.search(r'src="/[^/]', a) and not body for a, body in scripts)
        assert not re.search(r"\son[a-z]+\s*=|\sstyle\s*=|//[a-z]", html, re.IGNORECASE), page
    for script in ("app.js", "docs.js"):
        assert not re.search(r"\sstyle\s*=|\son[a-z]+\s*=\s*[\"']", (STATIC / script).read_text())
    assert httpx.get(f"{api.url}/redoc").status_code == 404  # it would load ReDoc from a CDN


# ---------------------------------------------------------------------------- HTTP itself


def test_head_answers_wherever_get_does(api: Api) -> None:
    with httpx.Client(base_url=api.url, headers=bearer(make_token(api.env)), timeout=30) as c:
        job = c.post("/v1/jobs", json=tiny_spec("head")).json()["id"]
        folder = api.data / "artifacts" / "jobs" / job_folder_name(api.data, job)
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(b"w" * (3 << 20))  # more than one chunk
        (folder / "plot.png").write_bytes(b"\x89PNG drawn")
        paths = ["/", "/docs", "/static/app.js", "/swagger-ui/swagger-ui-bundle.js", "/healthz",
                 "/readyz", "/openapi.json", "/v1/jobs", f"/v1/jobs/{job}",
                 f"/v1/jobs/{job}/artifacts", f"/v1/jobs/{job}/artifacts/model.pt",
                 f"/v1/jobs/{job}/plot.png"]  # fmt: skip
        for path in paths:
            get, head = c.get(path), c.head(path)
            assert (head.status_code, get.status_code) == (200, 200), (path, head.text)
            assert head.content == b"" and get.content != b"", path
            for name in ("content-type", "content-length", "content-disposition", "etag"):
                assert head.headers.get(name) == get.headers.get(name), (path, name)
        assert c.head("/v1/jobs/999999").status_code == 404
        assert c.head("/v1/jobs", headers={"Authorization": ""}).status_code == 401


def test_a_405_names_every_method_the_path_takes(api: Api) -> None:
    """Starlette's 405 named only its first route's methods (POST for /v1/jobs, not GET)."""
    with httpx.Client(base_url=api.url, headers=bearer(make_token(api.env)), timeout=30) as c:
        job = c.post("/v1/jobs", json=tiny_spec("allow")).json()["id"]
        expected = {"/v1/jobs": "GET, HEAD, POST", f"/v1/jobs/{job}": "DELETE, GET, HEAD",
                    f"/v1/jobs/{job}/cancel": "POST", "/v1/experiments": "GET, HEAD, POST",
                    "/healthz": "GET, HEAD"}  # fmt: skip
        for path, allow in expected.items():
            for method in ("PUT", "PATCH", "OPTIONS"):
                r = c.request(method, path)
                assert (r.status_code, r.headers.get("allow")) == (405, allow), (method, path)
                assert r.json()["error"]["code"] == "method_not_allowed"


def test_two_host_headers_are_refused(api: Api) -> None:
    """Only the first was checked: two readers of one request could see two hosts."""
    for hosts in (b"127.0.0.1", b"evil.example"), (b"evil.example", b"127.0.0.1"):
        request = b"GET /healthz HTTP/1.1\r\nHost: %s\r\nHost: %s\r\n" % hosts + CLOSE
        assert raw_request(api, request).startswith(b"HTTP/1.1 400 ")
    assert raw_request(api, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + CLOSE).startswith(
        b"HTTP/1.1 200 "
    )


def test_the_database_files_are_the_owners_alone(tmp_path: Path) -> None:
    """lsq.db and broker.db hold every token's digest and every job: mode 0600, also those an
    older version left 0644."""
    files = ("lsq.db", "lsq.db-wal", "lsq.db-shm", "broker.db")
    for run in ("new", "left 0644"):
        server = Api(tmp_path)
        try:
            assert httpx.get(f"{server.url}/readyz").status_code == 200  # opens the broker too
            modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in files}
        finally:
            server.proc.stop()
        assert modes == dict.fromkeys(files, 0o600), (run, modes)
        for name in files:
            (tmp_path / name).chmod(0o644)


def test_serve_shows_no_token_in_its_log(tmp_path: Path) -> None:
    """`lsq serve` wrote the dashboard link, token included, on every start: with its output
    sent to a file (not a terminal), the token is never written. Its API is `lsq api`'s."""
    port = free_port()
    serve = Proc(["serve", "--port", str(port)], service_env(tmp_path), tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 60
        # uvicorn logs its startup before it binds; "running on" comes after the bind
        while not (tmp_path / "token").exists() or "Uvicorn running on" not in serve.output():
            assert serve.alive() and time.monotonic() < deadline, serve.output()
            time.sleep(0.2)
        token = (tmp_path / "token").read_text().strip()
        assert f"dashboard at http://127.0.0.1:{port}/ " in serve.output()
        with socket.create_connection(("127.0.0.1", port), 30) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20))
            answer = answer_then_close(sock)  # fails while the server keeps it open
            assert answer == b"" or answer.startswith(b"HTTP/1.1 400 ")
    finally:
        serve.stop()
    assert token not in serve.output()
