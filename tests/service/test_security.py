"""The API as a hostile client meets it: tokens and owners, bounds, confined files, limits,
idempotent retries, and a fuzzer over the whole OpenAPI schema. Real uvicorn processes on the
embedded default (no worker: nothing here needs a job to run)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import (
    Proc,
    bearer,
    free_port,
    job_folder_name,
    make_token,
    service_env,
    tiny_spec,
)

pytestmark = pytest.mark.timeout(300)


class Api:
    """An API process alone, with its own data folder and settings."""

    def __init__(self, data: Path, **settings: str) -> None:
        self.env = service_env(data, **settings)
        self.data = data
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.proc = Proc(["api", "--port", port], self.env, data / "api.log")
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.alive(), self.proc.output()
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, self.proc.output()
                time.sleep(0.2)

    def client(self, owner: str = "ann") -> httpx.Client:
        token = make_token(self.env, owner)
        return httpx.Client(base_url=self.url, headers=bearer(token), timeout=30)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data = tmp_path_factory.mktemp("security")
    (data / "datasets").mkdir()
    server = Api(
        data,
        LSQ_REQUESTS_PER_SECOND="100000",
        LSQ_REQUEST_BURST="100000",
        LSQ_MAX_QUEUED_PER_OWNER="100000",
        LSQ_MAX_BODY_BYTES="65536",
    )
    yield server
    server.proc.stop()


@pytest.fixture(scope="module")
def ann(api: Api) -> Iterator[httpx.Client]:
    with api.client("ann") as client:
        yield client


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}, body
    return body["error"]


# ---------------------------------------------------------------------------- tokens, owners


def test_every_v1_route_needs_a_valid_token(api: Api, ann: httpx.Client) -> None:
    job = ann.post("/v1/jobs", json=tiny_spec("mine")).json()
    routes = [
        ("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/epochs"), ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/artifacts"),
        ("GET", f"/v1/jobs/{job['id']}/artifacts/metrics.json"),
    ]  # fmt: skip
    for headers in ({}, bearer("lsq_not-a-token"), {"Authorization": "Basic YTpi"}):
        for method, path in routes:
            response = httpx.request(method, api.url + path, headers=headers, json=tiny_spec("x"))
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert error_of(response)["code"] == "unauthorized"
    for path in ("/healthz", "/docs", "/openapi.json"):  # open, as are /readyz and /
        assert httpx.get(api.url + path).status_code == 200
    assert ann.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"  # no worker here


def test_another_owners_jobs_are_invisible(api: Api, ann: httpx.Client) -> None:
    job = ann.post("/v1/jobs", json=tiny_spec("ann's")).json()
    with api.client("bob") as bob:
        for method, path in [
            ("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/epochs"),
            ("POST", f"/v1/jobs/{job['id']}/cancel"), ("GET", f"/v1/jobs/{job['id']}/artifacts"),
        ]:  # fmt: skip
            response = bob.request(method, path)
            assert response.status_code == 404 and "does not exist" in error_of(response)["message"]
        assert job["id"] not in [j["id"] for j in bob.get("/v1/jobs").json()["items"]]
        taken = bob.post("/v1/jobs", json=tiny_spec("b", model={"init": {"job": job["id"]}}))
        assert (
            taken.status_code == 422 and error_of(taken)["fields"][0]["field"] == "model.init.job"
        )
    assert ann.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"  # bob cancelled nothing


def test_a_revoked_token_stops_working(api: Api) -> None:
    token = make_token(api.env, "carol")
    assert httpx.get(f"{api.url}/v1/jobs", headers=bearer(token)).status_code == 200
    listed = Proc(["token", "list"], api.env, api.data / "tokens.log")
    listed.popen.wait(60)
    token_id = [line.split()[0] for line in listed.output().splitlines() if "carol" in line][0]
    revoked = Proc(["token", "revoke", token_id], api.env, api.data / "revoke.log")
    assert revoked.popen.wait(60) == 0
    assert httpx.get(f"{api.url}/v1/jobs", headers=bearer(token)).status_code == 401


# ------------------------------------------------------------------- the probes, replayed


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"quantization": {"weight": [0, 1, 30000000]}}, "quantization.weight", "contiguous"),
        (
            {"quantization": {"weight": [14, -767669839, 479001599]}},
            "quantization.weight",
            "contig",
        ),
        ({"quantization": {"activation": [0, 4611686018427387904]}}, "quantization.activation", ""),
        ({"quantization": {"weight": list(range(70000))}}, "body", "over 65536 bytes"),
        ({"training": {"epochs": 10_000}}, "training.epochs", "limit of 1000 (LSQ_MAX_EPOCHS)"),
        ({"training": {"epochs": "3"}}, "training.epochs", "valid integer, not a string"),
        ({"training": {"epochs": True}}, "training.epochs", "valid integer, not true/false"),
        ({"training": {"batch_size": 10**9}}, "training.batch_size", "less than or equal"),
        ({"training": {"devices": 1000}}, "training.devices", "less than or equal to 64"),
        ({"training": {"devices": 16}}, "training.devices", "(LSQ_MAX_DEVICES)"),
        ({"training": {"seed": 10**30}}, "training.seed", "less than or equal"),
        ({"dataset": {"name": "synthetic", "train_size": 10**12}}, "dataset.train_size", ""),
        ({"name": "nul\x00name"}, "name", "control characters"),
        ({"dataset": {"name": "cifar10", "root": "/tmp/a\x00b"}}, "dataset.root", "control"),
        ({"model": {"init": "pretrained"}}, "model.init", "resnet20 has no pretrained weights"),
        ({"training": {"epochs": 1, "warmup_epochs": 2}}, "training.warmup_epochs", "longer"),
        ({"training": {"k" * 20_000: 1}}, "training." + "k" * 77 + "...", "unknown key"),
    ],
)
def test_hostile_specs_get_a_prompt_422_naming_the_field(
    ann: httpx.Client, change: dict, field: str, says: str
) -> None:
    started = time.perf_counter()
    response = ann.post("/v1/jobs", json={**tiny_spec("probe"), **change} if "name" in change
                        else tiny_spec("probe", **change))  # fmt: skip
    assert time.perf_counter() - started < 1.0
    assert len(response.content) < 5000  # a long key is not echoed in full
    if field == "body":
        assert response.status_code == 413 and says in error_of(response)["message"]
        return
    assert response.status_code == 422, response.text
    [error] = error_of(response)["fields"]
    assert error["field"] == field and says in error["message"]


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e309"])
def test_non_finite_numbers_are_refused(ann: httpx.Client, number: str) -> None:
    body = json.dumps(tiny_spec("inf", training={"lr": 12345.5})).replace("12345.5", number)
    response = ann.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert error_of(response)["fields"][0]["field"] == "training.lr"


def test_a_body_over_the_limit_is_413_even_without_a_length(api: Api, ann: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "' + b"x" * 70_000 + b'"}'

    response = ann.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and error_of(response)["code"] == "too_large"


def test_an_unknown_host_is_refused(api: Api) -> None:  # DNS rebinding
    response = httpx.get(f"{api.url}/healthz", headers={"Host": "evil.example:8000"})
    assert response.status_code == 400 and "LSQ_ALLOWED_HOSTS" in error_of(response)["message"]
    assert httpx.get(f"{api.url}/healthz", headers={"Host": "localhost"}).status_code == 200


def test_cors_is_closed(api: Api) -> None:
    response = httpx.options(
        f"{api.url}/v1/jobs",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


# --------------------------------------------------------------------------- confined files


def test_files_outside_the_data_roots_are_refused_without_saying_if_they_exist(
    api: Api, ann: httpx.Client, tmp_path: Path
) -> None:
    roots = api.env["LSQ_DATA_ROOTS"]
    escape = Path(roots) / "escape"
    escape.symlink_to("/etc", target_is_directory=True)
    artifacts = api.data / "artifacts" / "jobs" / "1"
    messages = set()
    for root in ["/etc", "/nonexistent", f"{roots}/../..", str(escape), "relative/path"]:
        response = ann.post(
            "/v1/jobs", json=tiny_spec("x", dataset={"name": "cifar10", "root": root})
        )
        assert response.status_code == 422, (root, response.text)
        [error] = error_of(response)["fields"]
        assert error["field"] == "dataset.root"
        messages.add(error["message"])
    for init in ["/root/.ssh/id_rsa", "/proc/self/environ", str(artifacts / "model.pt")]:
        response = ann.post("/v1/jobs", json=tiny_spec("x", model={"init": init}))
        assert (
            response.status_code == 422 and error_of(response)["fields"][0]["field"] == "model.init"
        )
        messages.add(error_of(response)["fields"][0]["message"])
    assert len(messages) == 1 and "LSQ_DATA_ROOTS" in messages.pop()  # one answer for all
    inside = ann.post("/v1/jobs", json=tiny_spec("ok", dataset={"name": "cifar10", "root": roots}))
    assert inside.status_code == 201


def test_artifacts_never_follow_a_symlink_out_of_the_job_folder(
    api: Api, ann: httpx.Client
) -> None:
    job = ann.post("/v1/jobs", json=tiny_spec("planted")).json()
    folder = api.data / "artifacts" / "jobs" / job_folder_name(api.data, job["id"])
    folder.mkdir(parents=True)
    (folder / "metrics.json").symlink_to("/etc/passwd")
    (folder / "model.pt").write_bytes(b"weights")
    assert [a["name"] for a in ann.get(f"/v1/jobs/{job['id']}/artifacts").json()] == ["model.pt"]
    assert ann.get(f"/v1/jobs/{job['id']}/artifacts/metrics.json").status_code == 404


# ----------------------------------------------------------------------------- idempotency


def test_a_retried_submission_with_its_key_gets_the_same_job(ann: httpx.Client) -> None:
    key = {"Idempotency-Key": f"retry-{time.time_ns()}"}
    first = ann.post("/v1/jobs", json=tiny_spec("once"), headers=key)
    again = ann.post("/v1/jobs", json=tiny_spec("once"), headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other = ann.post("/v1/jobs", json=tiny_spec("other"), headers=key)
    assert other.status_code == 422
    assert error_of(other)["fields"][0]["field"] == "Idempotency-Key"
    fresh = ann.post("/v1/jobs", json=tiny_spec("once"), headers={"Idempotency-Key": "new"})
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]


# ------------------------------------------------------------------------- quotas and rates


def test_quota_and_rate_limits_answer_429_with_retry_after(tmp_path: Path) -> None:
    strict = Api(
        tmp_path, LSQ_MAX_QUEUED_PER_OWNER="2", LSQ_REQUESTS_PER_SECOND="1", LSQ_REQUEST_BURST="5"
    )
    try:
        with strict.client("quota") as client:
            codes = [client.post("/v1/jobs", json=tiny_spec("q")).status_code for _ in range(3)]
            assert codes == [201, 201, 429]
            last = client.post("/v1/jobs", json=tiny_spec("q"))
            assert "unfinished jobs" in error_of(last)["message"]
            assert int(last.headers["retry-after"]) >= 1
        with strict.client("rate") as client:
            codes = [client.get("/v1/jobs").status_code for _ in range(8)]
            assert codes[:5] == [200] * 5 and 429 in codes[5:]
            limited = client.get("/v1/jobs")
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
            time.sleep(1.1)
            assert client.get("/v1/jobs").status_code == 200
        with (
            strict.client("valid") as client,
            httpx.Client(base_url=strict.url, headers=bearer("lsq_guess"), timeout=30) as guess,
        ):
            codes = [guess.get("/v1/jobs").status_code for _ in range(8)]
            assert codes[:5] == [401] * 5 and 429 in codes[5:]  # guessing from one address
            # waits, while a valid token from the same address does not
            assert client.get("/v1/jobs").status_code == 200
    finally:
        strict.proc.stop()


def test_the_rate_limiter_forgets_the_longest_idle_and_counts_ipv6_by_64() -> None:
    from starlette.requests import Request

    from api.web.auth import RateLimiter, TooManyRequests, _address

    limiter = RateLimiter(keys=2)
    limiter.take("worn", rate=1e-9, burst=1)
    with pytest.raises(TooManyRequests):
        limiter.take("worn", rate=1e-9, burst=1)
    limiter.take("other", rate=1e-9, burst=1)
    with pytest.raises(TooManyRequests):
        limiter.take("other", rate=1e-9, burst=1)  # two keys fit: both still counted
    limiter.take("third", rate=1e-9, burst=1)
    limiter.take("worn", rate=1e-9, burst=1)  # the longest idle of three is forgotten

    def address(host: str) -> str:
        return _address(Request({"type": "http", "client": (host, 1), "headers": []}))

    assert (
        address("2001:db8:1:2:aaaa::1")
        == address("2001:db8:1:2:bbbb::9")
        != address("2001:db8:1:3::1")
    )
    assert address("192.0.2.7") != address("192.0.2.8")


# -------------------------------------------------------------- a 500 keeps the connection


def test_an_unexpected_error_is_one_shape_and_the_connection_lives_on(tmp_path: Path) -> None:
    os.environ.setdefault("LSQ_DATA_DIR", str(tmp_path))
    from api.web.app import create_app

    app = create_app()

    @app.get("/boom")
    def _boom() -> None:
        raise RuntimeError("a bug")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            crashed = client.get("/boom")
            assert crashed.status_code == 500
            assert error_of(crashed) == {
                "code": "internal", "message": "internal error: RuntimeError", "fields": []
            }  # fmt: skip
            assert client.get("/healthz").status_code == 200  # the same keep-alive connection
    finally:
        server.should_exit = True
        thread.join(10)


# -------------------------------------------------------------------------------- fuzzing


FUZZ_CASES = 300
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_fuzz_the_whole_api(api: Api, ann: httpx.Client) -> None:
    """Cases generated from the OpenAPI schema, valid and not, on every operation: no 5xx,
    every response as the schema says, every 4xx in the one error shape."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    token = ann.headers["Authorization"]
    statuses: set[int] = set()

    valid, invalid = (schema.as_strategy(mode) for mode in GenerationMode)

    @given(case=st.one_of(valid, invalid))
    @settings(
        max_examples=FUZZ_CASES, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def check(case: schemathesis.Case) -> None:
        headers = {**(case.headers or {}), "Authorization": token}
        response = case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS)
        statuses.add(response.status_code)
        kind = (response.headers.get("content-type") or [""])[0]  # header values are lists
        if 400 <= response.status_code < 500 and kind.startswith("application/json"):
            body = response.json()
            assert set(body) == {"error"} and {"code", "message", "fields"} <= set(body["error"])

    check()
    assert {200, 201, 404, 422} <= statuses, statuses  # it reached past validation, too
    print(f"fuzzed {FUZZ_CASES} cases; statuses seen: {sorted(statuses)}")


def test_the_embedded_default_holds_50_concurrent_clients(api: Api, ann: httpx.Client) -> None:
    """SQLite: writes queue for the lock within their own thread, reads never wait for it."""
    token = ann.headers["Authorization"]

    def client(i: int) -> list[int]:
        codes = []
        with httpx.Client(base_url=api.url, headers={"Authorization": token}, timeout=30) as c:
            for j in range(2):
                posted = c.post("/v1/jobs", json=tiny_spec(f"c{i}-{j}"))
                codes += [posted.status_code, c.get(f"/v1/jobs/{posted.json()['id']}").status_code]
        return codes

    with ThreadPoolExecutor(50) as pool:
        codes = [code for codes in pool.map(client, range(50)) for code in codes]
    assert codes.count(201) == 100 and codes.count(200) == 100, sorted(set(codes))


def test_a_model_of_another_network_is_refused_at_submission(ann: httpx.Client) -> None:
    source = ann.post("/v1/jobs", json=tiny_spec("a resnet20")).json()  # queued or running
    spec = tiny_spec("x", model={"arch": "resnet32", "init": {"job": source["id"]}})
    response = ann.post("/v1/jobs", json=spec)
    ann.post(f"/v1/jobs/{source['id']}/cancel").raise_for_status()
    assert response.status_code == 422, response.text
    [error] = error_of(response)["fields"]
    assert error["field"] == "model.init.job"
    assert error["message"] == f"job {source['id']} is a resnet20, not a resnet32"


def test_what_a_hostile_client_found_later_is_a_clean_422(
    api: Api, ann: httpx.Client, tmp_path: Path
) -> None:
    loop = Path(api.env["LSQ_DATA_ROOTS"]) / "loop"
    loop.symlink_to(loop)  # resolving it raises RuntimeError on Python 3.11
    for root in (str(loop), f"{loop}/deeper", "~nosuchuser_zz/x", "~/x"):
        response = ann.post(
            "/v1/jobs", json=tiny_spec("x", dataset={"name": "cifar10", "root": root})
        )
        assert (
            response.status_code == 422
            and error_of(response)["fields"][0]["field"] == "dataset.root"
        )
    for job in (True, "1", 1.0):
        response = ann.post("/v1/jobs", json=tiny_spec("x", model={"init": {"job": job}}))
        assert response.status_code == 422, (job, response.text)
    for name in ("x\u009b31m", "x\u202ereversed", "line\u2028break"):
        response = ann.post("/v1/jobs", json={**tiny_spec("x"), "name": name})
        assert response.status_code == 422 and error_of(response)["fields"][0]["field"] == "name"
    bad_key = ann.post("/v1/jobs", json=tiny_spec("x"), headers={"Idempotency-Key": "a b"})
    assert error_of(bad_key)["fields"][0]["field"] == "Idempotency-Key"
    many = {**tiny_spec("x"), **{f"k{i}": 0 for i in range(5_000)}}  # just under the body limit
    started = time.perf_counter()
    response = ann.post("/v1/jobs", json=many)
    [error] = error_of(response)["fields"]  # refused on the count, none checked one by one
    assert response.status_code == 422 and error["message"].startswith("5004 keys; accepted:")
    assert time.perf_counter() - started < 2


def test_a_json_body_that_means_two_things_is_a_422_that_stores_nothing(ann: httpx.Client) -> None:
    """A key given twice (which one counts?), or half a UTF-16 surrogate pair in a string (no
    text holds it: an experiment's variant named so was stored, then unreadable, a 500)."""
    base = {k: v for k, v in tiny_spec("x").items() if k != "name"}
    variant = {"name": "\ud800", "quantization": {"weight": [-1, 0, 1]}}
    grid = {"quantization.\udfff": [[-1, 0, 1]]}
    bodies = [
        ("/v1/jobs", json.dumps(tiny_spec("twice"))[:-1] + ', "name": "again"}', '"name"'),
        ("/v1/experiments", json.dumps({"name": "e", "base": base, "baseline": {"train": True},
                                        "variants": [variant]}), "surrogate"),
        ("/v1/experiments", json.dumps({"name": "e", "base": base, "baseline": {"train": True},
                                        "grid": grid}), "surrogate"),
    ]  # fmt: skip
    many = "{" + ",".join(f'"{i:x}":0' for i in range(7000)) + ',"0":1}'  # the last repeats
    bodies.append(("/v1/jobs", many, '"0"'))
    before = [ann.get(f"/v1/{kind}").json()["items"] for kind in ("jobs", "experiments")]
    for (path, body, says), kind in zip(
        bodies, ["application/json", "Application/JSON", None, "text/plain"], strict=True
    ):  # FastAPI reads a body without a Content-Type as JSON, and `Application/JSON` too
        started = time.perf_counter()
        response = ann.post(path, content=body, headers={"Content-Type": kind} if kind else {})
        assert time.perf_counter() - started < 1  # one pass over the keys (5 s once)
        assert response.status_code == 422, (kind, response.text)
        [field] = error_of(response)["fields"]
        assert field["field"] == "body" and says in field["message"]
    assert [ann.get(f"/v1/{kind}").json()["items"] for kind in ("jobs", "experiments")] == before
    fine = {
        "name": "e",
        "base": base,
        "baseline": {"train": True},
        "variants": [variant | {"name": "v"}],
    }
    assert ann.post("/v1/experiments", json=fine).status_code == 201  # the rest was valid


def test_a_body_json_cannot_read_is_a_422_naming_the_body(ann: httpx.Client) -> None:
    """FastAPI answered these with a 400 "error parsing the body" that named nothing."""
    bodies = {
        b'{"name": "\xff\xfe"}': "not UTF-8",
        b'{"training": {"epochs": ' + b"9" * 5000 + b"}}": "over 4300 digits",
        b"[" * 5000 + b"]" * 5000: "nested too deeply",
    }
    for body, says in bodies.items():
        response = ann.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        [field] = error_of(response)["fields"]
        assert field["field"] == "body" and says in field["message"]


def test_an_unknown_key_in_an_experiment_names_the_experiments_own_keys(ann: httpx.Client) -> None:
    base = {k: v for k, v in tiny_spec("x").items() if k != "name"}
    for change, field, says in [
        ({"baselne": {}}, "baselne", "did you mean 'baseline'? accepted: kind, name, base,"),
        ({"baseline": {"job": 1, "extra": 1}}, "baseline.extra", "accepted: job"),
        ({"baseline": {"job": 1, "train": True}}, "baseline", "give exactly one of {train: true}"),
        ({"sensitivity": {"layerz": []}}, "sensitivity.layerz", "did you mean 'layers'?"),
    ]:
        body = {"name": "e", "base": base, "baseline": {"train": True}, "grid": {"a": [1]}}
        response = ann.post("/v1/experiments", json=body | change)
        assert response.status_code == 422, response.text
        assert [(f["field"], says in f["message"]) for f in error_of(response)["fields"]] == [
            (field, True)
        ], response.text
