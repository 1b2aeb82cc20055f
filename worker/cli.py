"""The `lsq` program, assembled here at the top of the import chain (worker -> api -> lsq):

lsq run SPEC [--out DIR] | --resume DIR    run a job spec on this machine (lsq.cli)
lsq export DIR [--onnx]                    check a run's integer export; write model.onnx
lsq layers ARCH [--dataset NAME]           a network's quantizable layers (quantization.layers)
lsq serve [--host H] [--port P] [--demo]   API + one worker on this machine
lsq api [--host H] [--port P]              the API alone (api.service.cli)
lsq worker [--gpus 0,1]                    a worker (one process per listed GPU)
lsq submit SPEC [--wait]                   submit a job spec to LSQ_URL (api.service.cli)
lsq upload FILE [--arch A --dataset D]     send an ONNX model or safetensors weights
lsq status ID [--json]                     a job's status and epochs (api.service.cli)
lsq db upgrade                             apply the database migrations (api.service.cli)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from api.service import cli as service_cli
from api.service.config import Settings, get_settings
from api.service.tokens import client_token, local_token
from lsq import cli as core_cli

# A worker stops its job at the next batch boundary; give it as long as an evaluation or a
# checkpoint write may take. Docker's stop_grace_period (or systemd's) bounds the whole stop.
STOP_GRACE_SECONDS = 600
# `lsq serve --demo`: a full-precision job, then a 2-bit one started from it, on synthetic
# data small enough for a laptop CPU (1-3 minutes on a 2-core one, by what else runs there).
DEMO_DATASET = {"name": "synthetic", "train_size": 1024, "test_size": 256}
DEMO_TRAINING = {"batch_size": 64, "lr": 0.05}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core_cli.register(sub)

    p = sub.add_parser("serve", help="start the API and one worker on this machine")
    service_cli.host_port(p)
    p.add_argument(
        "--demo",
        action="store_true",
        help="run a quick example (full precision, then 2-bit from it), print its "
        "per-epoch accuracy, and stop",
    )
    p.set_defaults(func=serve)

    p = sub.add_parser("worker", help="start a worker (one job at a time)")
    p.add_argument("--gpus", help="comma-separated GPU ids: one worker process per GPU")
    p.add_argument(
        "--no-banner",
        action="store_true",
        help="no start-up banner and no warning about running as root (as under `lsq serve`)",
    )
    service_cli.log_level(p)
    p.set_defaults(func=worker)

    service_cli.register(sub)
    return parser


def worker(args: argparse.Namespace) -> int:
    if args.gpus:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        # A process per GPU, each seeing only its own: started fresh, never forked, and each
        # with its share of the host's cores.
        command = ["worker", "--log-level", args.log_level]
        share = str(get_settings().workers_per_host * len(gpus))
        envs = [{"CUDA_VISIBLE_DEVICES": g, "LSQ_WORKERS_PER_HOST": share} for g in gpus]
        return _supervise([_spawn(command, env) for env in envs])
    _share_cores(get_settings())
    from .app import celery_app

    quiet = args.no_banner or args.log_level in ("warning", "error")
    if args.no_banner:
        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning)
    celery_app.worker_main(
        [
            *(["--quiet"] if quiet else []),
            "worker",
            f"--loglevel={args.log_level.upper()}",
            "--without-gossip",
            "--without-mingle",
            f"--hostname=lsq-{os.getpid()}@%h",
        ]
    )
    return 0


def _share_cores(settings: Settings) -> None:
    import torch

    torch.set_num_threads(settings.cpu_threads)
    print(
        f"lsq worker: {torch.get_num_threads()} torch threads (LSQ_TORCH_THREADS, else "
        f"OMP_NUM_THREADS, else the cores divided by LSQ_WORKERS_PER_HOST="
        f"{settings.workers_per_host})",
        file=sys.stderr,
        flush=True,
    )


def serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    safe = service_cli.safe_url
    print(
        f"lsq serve: API on http://{args.host}:{args.port} (docs at /docs), one worker; "
        f"database {safe(settings.db_url)}, broker {safe(settings.broker)}",
        flush=True,
    )
    token, new = _local_token(settings)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    if not args.demo:
        _show_token(f"http://{host}:{args.port}", token, new, settings)
    # The demo keeps the terminal for its own output.
    level = ["--log-level", "warning" if args.demo else "info"]
    procs = [
        _spawn(["api", "--host", args.host, "--port", str(args.port), "--access-log", "writes",
                *level]),
        _spawn(["worker", "--no-banner", *level]),
    ]  # fmt: skip
    if not args.demo:
        return _supervise(procs)
    url, again = f"http://{host}:{args.port}", _serve_command(args)
    return _supervise(procs, lambda: _demo(url, token, procs, again))


def _serve_command(args: argparse.Namespace) -> str:
    """`lsq serve` as typed to serve where this one did: the dashboard's link stays valid."""
    default = build_parser().parse_args(["serve"])
    options = [f"--{name} {getattr(args, name)}" for name in ("host", "port")
               if getattr(args, name) != getattr(default, name)]  # fmt: skip
    return " ".join(["lsq serve", *options])


def _local_token(settings: Settings) -> tuple[str | None, bool]:
    """Embedded: this machine's token (made on the first start, saved for the CLI), and
    whether it is new."""
    if settings.database_url:  # a shared database: tokens come from `lsq token create`
        return client_token(settings), False
    from api.service.db import upgrade_database

    upgrade_database()
    return local_token(settings)


def _show_token(url: str, token: str | None, new: bool, settings: Settings) -> None:
    """The dashboard's link, and a new token once: on a terminal only, never in a log (stdout
    sent to a file)."""
    if new and token and sys.stdout.isatty():
        print(f"lsq serve: made a token for this machine, saved in {settings.token_file} "
              f"(lsq submit and lsq status use it; other clients send it as "
              f"Authorization: Bearer):\n  {token}", flush=True)  # fmt: skip
    link = service_cli.dashboard_line(url, "", settings, token)
    print(f"lsq serve: dashboard at {link}", flush=True)


def _demo(url: str, token: str | None, procs: list[subprocess.Popen], again: str) -> int:
    from api.service.client import Client, ServiceError, format_job, job_summary

    client = Client(url, token)
    try:
        client.wait_ready(alive=lambda: all(p.poll() is None for p in procs))
        fp = client.submit(_demo_spec("demo-fp32", epochs=4))
        quantized = {"weight": [-2, -1, 0, 1], "activation": [0, 1, 2, 3]}
        q = client.submit(
            _demo_spec("demo-2bit", epochs=3, lr=0.01, init={"job": fp["id"]}, q=quantized)
        )
        ended = []
        for job in (fp, q):
            print(f"job {job['id']} {job['name']!r} {job['status']}", flush=True)
            ended.append(client.follow(job["id"]))
            print(format_job(ended[-1]), flush=True)
    except ServiceError as e:
        print(f"lsq serve --demo: {e}", file=sys.stderr)
        return 2
    _stop(procs)  # first, so that their goodbyes come before the summary
    print("\nThe demo's two jobs:")
    for job in ended:
        print(job_summary(job, str(_folder_of(job["id"]))))
    dashboard = service_cli.dashboard_line(url, "", get_settings(), token)
    print(
        f"\nNext: `{again}` keeps the service running (the dashboard at {dashboard}, the "
        f"API's docs at {url}/docs), and `lsq submit SPEC --wait` runs a job of yours on it."
    )
    return 0 if all(job["status"] == "succeeded" for job in ended) else 1


def _folder_of(job_id: int) -> Path:
    """Where a job of this machine's embedded service keeps its files."""
    from api.service.artifacts import job_folder
    from api.service.db import session_scope
    from api.service.store import jobs as job_store

    with session_scope(read_only=True) as session:
        return job_folder(get_settings(), job_store.get_job(session, job_id).folder)


def _demo_spec(name: str, epochs: int, lr: float = 0.05, init: dict | None = None,
               q: dict | None = None) -> dict:  # fmt: skip
    return {
        "name": name,
        "dataset": DEMO_DATASET,
        "model": {"arch": "resnet20", "init": init},
        "quantization": q or {},
        "training": {**DEMO_TRAINING, "epochs": epochs, "lr": lr},
    }


def _spawn(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *command], env={**os.environ, **(env or {})}
    )


def _supervise(procs: list[subprocess.Popen], main: Callable[[], int] | None = None) -> int:
    """Run `main` (default: wait until one process ends), then stop all the processes.
    Ctrl-C and SIGTERM stop them too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if main is not None:
            return main()
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return next(p.returncode for p in procs if p.returncode is not None)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM (a worker requeues its running job), then SIGKILL what is still alive."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
