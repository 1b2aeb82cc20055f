"""A small HTTP client of the service for the command line: submit, follow, print."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, BinaryIO

import httpx
from pydantic import ValidationError
from tqdm import tqdm

from api.service.config import Settings
from api.service.job_spec import ServiceJobSpec
from api.service.tokens import client_token
from lsq.metrics import EpochMetrics, RunResult, epoch_table, fixed, summary_line
from lsq.spec import format_errors

FINISHED = ("succeeded", "failed", "cancelled")


class ServiceError(Exception):
    """The service answered with an error, or could not be reached."""


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    @classmethod
    def from_settings(cls, settings: Settings) -> Client:
        """LSQ_URL, with LSQ_TOKEN or the token `lsq serve` saved on this machine."""
        return cls(settings.url, client_token(settings))

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ServiceError(
                f"cannot reach the service at {self.url} ({e}); "
                "start it with `lsq serve` or set LSQ_URL"
            ) from None
        if response.status_code == 401:
            raise ServiceError(
                f"{_describe_error(response)}\n  set LSQ_TOKEN to a token of this service "
                "(`lsq token create OWNER` on its host makes one)"
            )
        if response.is_error:
            raise ServiceError(_describe_error(response))
        return response.json()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/jobs", json=spec)

    def upload(self, file: BinaryIO, name: str, fields: dict[str, str]) -> dict[str, Any]:
        """POST /v1/models: the file streams (httpx reads it in chunks)."""
        files = {"file": (name, file)}
        return self._call("POST", "/v1/models", files=files, data=fields, timeout=300)

    def job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def submit_experiment(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/experiments", json=spec)

    def experiment(self, experiment_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/experiments/{experiment_id}")

    def experiment_table(self, experiment_id: int) -> str:
        try:
            response = self.http.get(f"/v1/experiments/{experiment_id}", params={"format": "md"})
        except httpx.TransportError as e:
            raise ServiceError(f"cannot reach the service at {self.url} ({e})") from None
        if response.is_error:
            raise ServiceError(_describe_error(response))
        return response.text

    def follow_experiment(self, experiment_id: int, poll: float = 2.0) -> dict[str, Any]:
        """Poll an experiment until it ends, with a progress bar over its jobs' epochs."""
        body = self.experiment(experiment_id)
        total = sum(j["progress"]["epochs"] for j in body["jobs"])
        with tqdm(total=total, desc=f"experiment {experiment_id}", unit="epoch",
                  disable=None, bar_format=BAR) as pbar:  # fmt: skip
            while True:
                done = sum(_epochs_done(j) for j in body["jobs"])
                pbar.n = min(total, done)
                pbar.set_postfix(
                    {
                        "status": body["status"],
                        "jobs": f"{body['finished_jobs']}/{body['total_jobs']}",
                    },
                    refresh=False,
                )
                pbar.refresh()
                if body["status"] in FINISHED:
                    return body
                time.sleep(poll)
                body = self.experiment(experiment_id)

    def wait_ready(self, timeout: float = 120, alive: Callable[[], bool] = lambda: True) -> None:
        """Wait for /readyz; `alive` says whether the processes that should answer still run."""
        deadline = time.monotonic() + timeout
        while True:
            if not alive():
                raise ServiceError("the service exited before it was ready (see its log above)")
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"the service at {self.url} was not ready in {timeout:.0f} s")
            time.sleep(0.5)

    def follow(self, job_id: int, poll: float = 1.0, bar: bool = True) -> dict[str, Any]:
        """Poll a job until it ends, with a progress bar in epochs; return its final state."""
        job = self.job(job_id)
        total = job["progress"]["epochs"]
        with tqdm(
            total=total,
            desc=f"job {job_id}",
            unit="epoch",
            disable=None if bar else True,  # None: only on a terminal
            bar_format=BAR,
        ) as pbar:
            while True:
                progress, epochs = job["progress"], job["epochs"]
                pbar.n = min(total, max(len(epochs), progress["epoch"] - 1 + progress["fraction"]))
                postfix = {"status": job["status"]}
                if epochs:
                    postfix["test_top1"] = f"{fixed(epochs[-1]['test_top1'])}%"
                pbar.set_postfix(postfix, refresh=False)
                pbar.refresh()
                if job["status"] in FINISHED:
                    return job
                time.sleep(poll)
                job = self.job(job_id)


BAR = "{l_bar}{bar}| {n:.2f}/{total} epochs [{elapsed}]{postfix}"


def _epochs_done(job: dict[str, Any]) -> float:
    progress = job["progress"]
    if job["status"] == "succeeded":
        return progress["epochs"]
    return max(0.0, progress["epoch"] - 1 + progress["fraction"])


def _describe_error(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:500]}"
    fields = [(f["field"], f["message"]) for f in error.get("fields", [])]
    return format_errors(f"HTTP {response.status_code} {error['message']}", fields)


def format_job(job: dict[str, Any]) -> str:
    """A job as a few lines of text: status, progress, error or result, and its epochs."""
    spec, progress = job["spec"], job["progress"]
    lines = [
        f"job {job['id']} {job['name']!r}: {job['status']}"
        f" ({spec['model']['arch']} on {spec['dataset']['name']},"
        f" epoch {progress['epoch']}/{progress['epochs']}, attempts {job['attempts']})",
    ]
    if job["error"]:
        lines.append(f"error: {job['error']}")
    if job["result"]:
        r = RunResult.model_validate(job["result"])
        line = (
            f"result: final top-1 {fixed(r.final_top1)}%, top-5 {fixed(r.final_top5)}%; "
            f"best top-1 {fixed(r.best_top1)}% (epoch {r.best_epoch})"
        )
        if r.init_top1 is not None:
            line += f"; start {fixed(r.init_top1)}%, drop {fixed(r.drop_top1)} points"
        lines.append(line)
    if job["epochs"]:
        lines.append(epoch_table([EpochMetrics.model_validate(e) for e in job["epochs"]]))
    return "\n".join(lines)


def job_summary(job: dict[str, Any], where: str) -> str:
    """How a job ended, in a line or two: what it kept, or why it failed, and its files."""
    head = f"job {job['id']} {job['status']}"
    if job["error"]:
        return f"{head}: {job['error']}"
    if not job["result"]:
        return f"{head} after {len(job['epochs'])} epoch(s)"
    line = summary_line(_describe(job), RunResult.model_validate(job["result"]))
    return f"{head}: {line}\n  files: {where}"


def _describe(job: dict[str, Any]) -> str:
    """What a job was, from its spec; just its name for a spec this version cannot read."""
    try:
        return ServiceJobSpec.model_validate(job["spec"]).describe()
    except ValidationError:
        return job["name"]
