"""`lsq`: run jobs locally (`lsq run`, from the core) or through the job service.

lsq serve [--host H] [--port P] [--demo]   API + one worker on this machine
lsq api [--host H] [--port P]              the API alone
lsq worker [--gpus 0,1]                    a worker (one process per listed GPU)
lsq submit SPEC [--wait]                   submit a job spec to LSQ_URL
lsq status ID [--json]                     a job's status and epochs
lsq db upgrade                             apply the database migrations
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import get_settings

# A worker stops its job at the next batch boundary; give it as long as an evaluation or a
# checkpoint write may take. Docker's stop_grace_period (or systemd's) bounds the whole stop.
STOP_GRACE_SECONDS = 600
# `lsq serve --demo`: a full-precision job, then a 2-bit one started from it, on synthetic
# data small enough for a laptop CPU (about a minute).
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
    try:
        from lsq.cli import register
    except ImportError:  # a checkout without the core's CLI: the service commands still work
        pass
    else:
        register(sub)

    p = sub.add_parser("serve", help="start the API and one worker on this machine")
    _host_port(p)
    p.add_argument(
        "--demo",
        action="store_true",
        help="run a quick example (full precision, then 2-bit from it), print its "
        "per-epoch accuracy, and stop",
    )
    p.set_defaults(func=serve)

    p = sub.add_parser("api", help="start the API alone")
    _host_port(p)
    _log_level(p)
    p.set_defaults(func=api)

    p = sub.add_parser("worker", help="start a worker (one job at a time)")
    p.add_argument("--gpus", help="comma-separated GPU ids: one worker process per GPU")
    _log_level(p)
    p.set_defaults(func=worker)

    p = sub.add_parser("submit", help="submit a job spec (YAML or JSON) to the service")
    p.add_argument("spec", type=Path)
    p.add_argument("--wait", action="store_true", help="follow the job to its end")
    p.set_defaults(func=submit)

    p = sub.add_parser("status", help="show a job of the service")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.set_defaults(func=status)

    p = sub.add_parser("db", help="database commands")
    db = p.add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply the migrations").set_defaults(func=db_upgrade)
    return parser


def _host_port(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)


def _log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


# ------------------------------------------------------------------------ service processes


def api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level in ("debug", "info"),
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    if args.gpus:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        # A process per GPU, each seeing only its own: started fresh, never forked.
        command = ["worker", "--log-level", args.log_level]
        return _supervise([_spawn(command, {"CUDA_VISIBLE_DEVICES": g}) for g in gpus])
    from worker.app import celery_app

    quiet = ["--quiet"] if args.log_level in ("warning", "error") else []  # no banner
    celery_app.worker_main(
        [
            *quiet,
            "worker",
            f"--loglevel={args.log_level.upper()}",
            "--without-gossip",
            "--without-mingle",
            f"--hostname=lsq-{os.getpid()}@%h",
        ]
    )
    return 0


def serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    print(
        f"lsq serve: API on http://{args.host}:{args.port} (docs at /docs), one worker; "
        f"database {_safe_url(settings.db_url)}, broker {_safe_url(settings.broker)}",
        flush=True,
    )
    # The demo keeps the terminal for its own output.
    level = ["--log-level", "warning" if args.demo else "info"]
    procs = [
        _spawn(["api", "--host", args.host, "--port", str(args.port), *level]),
        _spawn(["worker", *level]),
    ]
    if not args.demo:
        return _supervise(procs)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    return _supervise(procs, lambda: _demo(f"http://{host}:{args.port}", procs))


def _demo(url: str, procs: list[subprocess.Popen]) -> int:
    from .client import Client, ServiceError, format_job

    client = Client(url)
    try:
        client.wait_ready(alive=lambda: all(p.poll() is None for p in procs))
        base = {"dataset": DEMO_DATASET}
        fp = client.submit(
            {
                **base,
                "name": "demo-fp32",
                "model": {"arch": "resnet20"},
                "training": {**DEMO_TRAINING, "epochs": 4},
            }
        )
        q = client.submit(
            {
                **base,
                "name": "demo-2bit",
                "model": {"arch": "resnet20", "init": {"job": fp["id"]}},
                "quantization": {"weight": [-2, -1, 0, 1], "activation": [0, 1, 2, 3]},
                "training": {**DEMO_TRAINING, "epochs": 3, "lr": 0.01},
            }
        )
        ok = True
        for job in (fp, q):
            print(f"job {job['id']} {job['name']!r} {job['status']}: {url}/v1/jobs/{job['id']}")
            done = client.follow(job["id"])
            print(format_job(done), flush=True)
            ok = ok and done["status"] == "succeeded"
    except ServiceError as e:
        print(f"lsq serve --demo: {e}", file=sys.stderr)
        return 2
    return 0 if ok else 1


def _spawn(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", *command], env={**os.environ, **(env or {})}
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


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# ---------------------------------------------------------------------------- HTTP clients


def submit(args: argparse.Namespace) -> int:
    import yaml

    from .client import Client, ServiceError, format_job

    try:
        spec: Any = yaml.safe_load(args.spec.read_text())
    except (OSError, yaml.YAMLError) as e:
        print(f"lsq submit: cannot read {args.spec}: {e}", file=sys.stderr)
        return 2
    client = Client(get_settings().url)
    try:
        job = client.submit(spec)
        print(
            f"job {job['id']} {job['name']!r} {job['status']}: {client.url}/v1/jobs/{job['id']}",
            flush=True,
        )
        if not args.wait:
            return 0
        job = client.follow(job["id"])
    except ServiceError as e:
        print(f"lsq submit: {e}", file=sys.stderr)
        return 2
    print(format_job(job))
    return 0 if job["status"] == "succeeded" else 1


def status(args: argparse.Namespace) -> int:
    from .client import Client, ServiceError, format_job

    try:
        job = Client(get_settings().url).job(args.id)
    except ServiceError as e:
        print(f"lsq status: {e}", file=sys.stderr)
        return 2
    print(json.dumps(job, indent=2) if args.json else format_job(job))
    return 0


def db_upgrade(args: argparse.Namespace) -> int:
    from .db import upgrade_database

    settings = get_settings()
    upgrade_database()
    print(f"lsq db upgrade: {_safe_url(settings.db_url)} is at the latest revision")
    return 0


if __name__ == "__main__":
    sys.exit(main())
