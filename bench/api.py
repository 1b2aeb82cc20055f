"""The API's own speed: GET /v1/jobs/{id} and POST /v1/jobs at 50 concurrent clients.

    .venv/bin/python bench/api.py                  # embedded default and PostgreSQL + Redis
    .venv/bin/python bench/api.py --backend postgres --clients 50 --seconds 10

Starts a real API process (uvicorn) and worker (bench/load.py's `service`), runs one finished
job of 5 epochs (the GET's subject), stops the worker, then, from one asyncio client process:
- GET, saturated: each client sends its next request as soon as the last one answers;
- GET, paced: each client polls every --interval seconds, as the dashboard and `lsq submit
  --wait` do (the latency a poller sees when the API is not saturated);
- POST, saturated: submissions (they stay queued: no worker runs during the bench).
Prints requests/s and p50/p99 latency of each. Client and server share this machine's cores.
PostgreSQL and Redis: LSQ_BENCH_PG_URL (a server URL) and LSQ_BENCH_REDIS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from load import SPEC, percentile, service


async def clients(
    url: str, token: str, n: int, request: str, until: float, interval: float = 0.0
) -> tuple[list[float], int]:
    """n clients sending `request` ("GET path" or "POST path") until `until` (perf_counter):
    latencies in ms, and errors. aiohttp: a client lighter than the server it measures."""
    method, path = request.split(" ")
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:

        async def client(i: int) -> None:
            nonlocal errors
            await asyncio.sleep(interval * i / n)  # pacers spread over the interval
            body = {**SPEC, "name": f"bench-{i}"} if method == "POST" else None
            while (start := time.perf_counter()) < until:
                try:
                    async with http.request(method, path, json=body) as response:
                        await response.read()
                        errors += response.status >= 300
                except aiohttp.ClientError as e:
                    errors += 1
                    print(f"    {method} {type(e).__name__}: {e}", flush=True)
                latencies.append(1000 * (time.perf_counter() - start))
                if interval:
                    await asyncio.sleep(max(0.0, interval - (time.perf_counter() - start)))

        await asyncio.gather(*(client(i) for i in range(n)))
    return latencies, errors


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, token: str, name: str, request: str, args: argparse.Namespace, **kw) -> None:
    api_pid = args.api_pid
    started, api_cpu, own_cpu = time.perf_counter(), cpu_seconds(api_pid), time.process_time()
    until = started + args.seconds
    latencies, errors = asyncio.run(clients(url, token, args.clients, request, until, **kw))
    seconds = time.perf_counter() - started
    api_cpu, own_cpu = cpu_seconds(api_pid) - api_cpu, time.process_time() - own_cpu
    print(
        f"  {name:<14} {len(latencies) / seconds:7.0f} req/s  p50 {percentile(latencies, 50):6.1f}"
        f" ms  p99 {percentile(latencies, 99):6.1f} ms  ({len(latencies)} requests, {errors} "
        f"errors; CPU per request: API {1000 * api_cpu / len(latencies):.1f} ms, client "
        f"{1000 * own_cpu / len(latencies):.1f} ms)",
        flush=True,
    )


def bench(backend: str, args: argparse.Namespace, folder: Path) -> None:
    with service(backend, folder, LSQ_MAX_QUEUED_PER_OWNER="1000000") as (url, token, procs):
        auth = {"Authorization": f"Bearer {token}"}
        spec = {**SPEC, "training": {**SPEC["training"], "epochs": 5}}
        job = httpx.post(f"{url}/v1/jobs", json=spec, headers=auth).json()["id"]
        while httpx.get(f"{url}/v1/jobs/{job}", headers=auth).json()["status"] != "succeeded":
            time.sleep(0.5)
        procs["worker"].terminate()
        procs["worker"].wait(120)
        args.api_pid = procs["api"].pid
        print(f"{backend}: {args.clients} clients, {args.seconds:.0f} s each", flush=True)
        measure(url, token, "GET saturated", f"GET /v1/jobs/{job}", args)
        paced = f"GET paced {args.interval:g}s"
        measure(url, token, paced, f"GET /v1/jobs/{job}", args, interval=args.interval)
        measure(url, token, "POST saturated", "POST /v1/jobs", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "postgres", "both"], default="both")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0, help="paced clients' period")
    args = parser.parse_args()
    for backend in ["postgres", "embedded"] if args.backend == "both" else [args.backend]:
        folder = Path(tempfile.mkdtemp(prefix=f"lsq-api-{backend}-"))
        bench(backend, args, folder)
        print(f"  logs in {folder}", flush=True)


if __name__ == "__main__":
    main()
