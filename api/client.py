"""A small HTTP client of the service for the command line: submit, follow, print."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from tqdm import tqdm

FINISHED = ("succeeded", "failed", "cancelled")


class ServiceError(Exception):
    """The service answered with an error, or could not be reached."""


class Client:
    def __init__(self, url: str, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ServiceError(
                f"cannot reach the service at {self.url} ({e}); "
                "start it with `lsq serve` or set LSQ_URL"
            ) from None
        if response.is_error:
            raise ServiceError(_describe_error(response))
        return response.json()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/jobs", json=spec)

    def job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

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
            disable=not bar,
            bar_format="{l_bar}{bar}| {n:.2f}/{total} epochs [{elapsed}]{postfix}",
        ) as pbar:
            while True:
                progress, epochs = job["progress"], job["epochs"]
                pbar.n = min(total, max(len(epochs), progress["epoch"] - 1 + progress["fraction"]))
                postfix = {"status": job["status"]}
                if epochs:
                    postfix["test_top1"] = f"{epochs[-1]['test_top1']:.2f}%"
                pbar.set_postfix(postfix, refresh=False)
                pbar.refresh()
                if job["status"] in FINISHED:
                    return job
                time.sleep(poll)
                job = self.job(job_id)


def _describe_error(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:500]}"
    lines = [f"HTTP {response.status_code} {error['message']}"]
    lines += [f"  {f['field']}: {f['message']}" for f in error.get("fields", [])]
    return "\n".join(lines)


def format_epochs(epochs: list[dict[str, Any]]) -> str:
    head = (
        f"{'epoch':>5} {'train_loss':>10} {'train_top1':>10} {'test_loss':>9} "
        f"{'test_top1':>9} {'test_top5':>9} {'lr':>8} {'seconds':>8}"
    )
    rows = [
        f"{e['epoch']:>5} {e['train_loss']:>10.4f} {e['train_top1']:>10.2f} {e['test_loss']:>9.4f} "
        f"{e['test_top1']:>9.2f} {e['test_top5']:>9.2f} {e['lr']:>8.5f} {e['seconds']:>8.1f}"
        for e in epochs
    ]
    return "\n".join([head, *rows])


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
        r = job["result"]
        line = (
            f"result: final top-1 {r['final_top1']:.2f}%, top-5 {r['final_top5']:.2f}%; "
            f"best top-1 {r['best_top1']:.2f}% (epoch {r['best_epoch']})"
        )
        if r.get("init_top1") is not None:
            line += f"; start {r['init_top1']:.2f}%, drop {r['drop_top1']:.2f} points"
        lines.append(line)
    if job["epochs"]:
        lines.append(format_epochs(job["epochs"]))
    return "\n".join(lines)
