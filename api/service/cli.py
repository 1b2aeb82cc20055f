"""The service's commands: `lsq api`, `lsq submit`, `lsq status`, `lsq db upgrade`.

(`lsq worker` and `lsq serve` start workers and live in worker.cli, which assembles the whole
`lsq` program.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from api.service.config import Settings, get_settings


def register(sub: argparse._SubParsersAction) -> None:
    api_options(
        sub.add_parser("api", help="start the API alone", description=API_HELP)
    ).set_defaults(func=api)

    p = sub.add_parser("submit", help="submit a job spec (YAML or JSON) to the service")
    p.add_argument("spec", type=Path)
    p.add_argument("--wait", action="store_true", help="follow the job to its end")
    p.set_defaults(func=submit)

    p = sub.add_parser(
        "experiment", help="submit an experiment (a baseline and variants) to the service"
    )
    p.add_argument("spec", type=Path)
    p.add_argument("--wait", action="store_true", help="follow it to its end, then the table")
    p.set_defaults(func=experiment)

    p = sub.add_parser("upload", help="send a model file (ONNX, or safetensors weights)")
    p.add_argument("file", type=Path)
    p.add_argument("--arch", help="safetensors: the network the weights are for")
    p.add_argument("--dataset", help="safetensors: the data they are for (default cifar10)")
    for name in ("classes", "channels", "image-size"):
        p.add_argument(f"--{name}", type=int, help=f"safetensors: {name}, if not the dataset's")
    p.set_defaults(func=upload)

    p = sub.add_parser("status", help="show a job (or with --experiment, an experiment)")
    p.add_argument("id", type=int)
    p.add_argument("--experiment", action="store_true", help="ID is an experiment's")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=status)
    _register_admin(sub)


def _register_admin(sub: argparse._SubParsersAction) -> None:
    """The commands run on the service's host, against its database."""
    p = sub.add_parser("token", help="API tokens (on the service's host: reads DATABASE_URL)")
    tok = p.add_subparsers(dest="token_command", required=True)
    create = tok.add_parser("create", help="make a token for OWNER and print it (only once)")
    create.add_argument("owner", help="who the token acts for: the owner of its jobs")
    create.set_defaults(func=token_create)
    tok.add_parser("list", help="every token: id, owner, created, revoked").set_defaults(
        func=token_list
    )
    revoke = tok.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=token_revoke)

    p = sub.add_parser("owner", help="an owner's limits (on the service's host)")
    own = p.add_subparsers(dest="owner_command", required=True)
    lim = own.add_parser(
        "limits", help="show OWNER's limits and usage; with options, set them first"
    )
    lim.add_argument("owner")
    for name in LIMIT_OPTIONS:
        lim.add_argument(
            f"--{name.replace('_', '-')}", metavar="N", type=_limit,
            help="a number, or 'default' for the service's (LSQ_...)",
        )  # fmt: skip
    lim.set_defaults(func=owner_limits)

    p = sub.add_parser("db", help="database commands")
    db = p.add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply the migrations").set_defaults(func=db_upgrade)


def host_port(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")


def log_level(p: argparse.ArgumentParser) -> None:
    levels = ["debug", "info", "warning", "error"]
    p.add_argument("--log-level", default="info", choices=levels, help="(default %(default)s)")


API_HELP = "the API alone, on this machine's database and broker (a worker runs apart)"


def api_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`lsq api`'s options, which `python -m api.web` reads too."""
    host_port(p)
    log_level(p)
    p.add_argument(
        "--access-log",
        default="all",
        choices=["all", "writes"],
        help="writes: log only requests that change something, or fail (no polling lines)",
    )
    return p


def api(args: argparse.Namespace) -> int:
    """Become `python -m api.web`: the HTTP face, which nothing below it imports."""
    options = ["--host", args.host, "--port", str(args.port), "--log-level", args.log_level]
    options += ["--access-log", args.access_log]
    os.execv(sys.executable, [sys.executable, "-m", "api.web", *options])


def submit(args: argparse.Namespace) -> int:
    from api.service.client import Client, ServiceError, format_job, job_summary
    from lsq.documents import DocumentError, read_document

    try:
        spec = read_document(args.spec)
    except DocumentError as e:
        print(f"lsq submit: {e}", file=sys.stderr)
        return 2
    client = Client.from_settings(get_settings())
    try:
        job = client.submit(spec)
        print(f"job {job['id']} {job['name']!r} {job['status']}", flush=True)
        if not args.wait:
            print(f"follow it with: lsq status {job['id']}")
            return 0
        job = client.follow(job["id"])
    except ServiceError as e:
        print(f"lsq submit: {e}", file=sys.stderr)
        return 2
    print(format_job(job))
    print(job_summary(job, dashboard_line(client.url, f"jobs/{job['id']}", get_settings())))
    return 0 if job["status"] == "succeeded" else 1


def upload(args: argparse.Namespace) -> int:
    """Send a file; print the upload and the spec line that names it."""
    from api.service.client import Client, ServiceError

    given = ("arch", "dataset", "classes", "channels", "image_size")
    fields = {k: str(getattr(args, k)) for k in given if getattr(args, k) is not None}
    try:
        with args.file.open("rb") as f:
            found = Client.from_settings(get_settings()).upload(f, args.file.name, fields)
    except (OSError, ServiceError) as e:
        print(f"lsq upload: {e}", file=sys.stderr)
        return 2
    shape = f"{found['channels']} x {found['image_size']} px, {found['classes']} classes"
    print(f"upload {found['id']}: {found['kind']} {found['sha256'][:12]}, {shape}")
    ref = {"upload": found["id"]}
    use = (
        {"model": ref}
        if found["kind"] == "onnx"
        else {"model": {"arch": found["arch"], "init": ref}}
    )
    print(f"name it in a job spec as: {json.dumps(use)}")
    return 0


def experiment(args: argparse.Namespace) -> int:
    from api.service.client import Client, ServiceError
    from lsq.documents import DocumentError, read_document

    try:
        spec = read_document(args.spec)
    except DocumentError as e:
        print(f"lsq experiment: {e}", file=sys.stderr)
        return 2
    client = Client.from_settings(get_settings())
    try:
        body = client.submit_experiment(spec)
        print(f"experiment {body['id']} {body['name']!r}: {body['total_jobs']} jobs", flush=True)
        if not args.wait:
            print(f"follow it with: lsq status --experiment {body['id']}")
            return 0
        body = client.follow_experiment(body["id"])
        print(f"experiment {body['id']} {body['status']}:\n")
        print(client.experiment_table(body["id"]))
        page = f"experiments/{body['id']}"
        print(f"plot and table: {dashboard_line(client.url, page, get_settings())}")
    except ServiceError as e:
        print(f"lsq experiment: {e}", file=sys.stderr)
        return 2
    return 0 if body["status"] == "succeeded" else 1


def dashboard_link(url: str, page: str = "", token: str | None = None) -> str:
    """The dashboard's `page` (`jobs/7`, `experiments/3`; by default its home page), with
    `token` in the link when given: the page keeps it and asks for none."""
    link = f"{url.rstrip('/')}/"
    if page:
        return link + f"#/{page}" + (f"?token={token}" if token else "")
    return link + (f"#token={token}" if token else "")


def dashboard_line(url: str, page: str, settings: Settings, token: str | None = None) -> str:
    """A link to a dashboard page, to print: with the token (by default the CLI's) on a
    terminal, else with where to find it (stdout sent to a file is a log, and a log must not
    keep a token)."""
    from api.service.tokens import client_token

    token = token or client_token(settings)
    if token and sys.stdout.isatty():
        return dashboard_link(url, page, token)
    return f"{dashboard_link(url, page)} ({token_hint(settings)})"


def token_hint(settings: Settings) -> str:
    """Where the dashboard's token is, as the page asks for it once."""
    if settings.token:
        return "it asks for an API token once: LSQ_TOKEN's"
    if settings.token_file.is_file():
        return f"it asks for an API token once: this machine's, in {settings.token_file}"
    return "it asks for an API token once (`lsq token create OWNER` makes one)"


def status(args: argparse.Namespace) -> int:
    from api.service.client import Client, ServiceError, format_job

    client = Client.from_settings(get_settings())
    try:
        if args.experiment:
            body = client.experiment(args.id)
            text = (
                f"experiment {body['id']} {body['name']!r}: {body['status']} "
                f"({body['finished_jobs']}/{body['total_jobs']} jobs ended)\n\n"
                + client.experiment_table(args.id)
            )
        else:
            body = client.job(args.id)
            text = format_job(body)
    except ServiceError as e:
        print(f"lsq status: {e}", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2) if args.json else text)
    return 0


OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


def token_create(args: argparse.Namespace) -> int:
    from api.service import tokens
    from api.service.db import session_scope, upgrade_database

    if not OWNER.fullmatch(args.owner):
        print("lsq token create: OWNER is 1-100 letters, digits, . _ @ -", file=sys.stderr)
        return 2
    upgrade_database()
    with session_scope() as session:
        token, plain = tokens.create(session, args.owner)
    print(f"token {token.id} for {args.owner} (shown once; send it as Authorization: Bearer):")
    print(plain)
    return 0


def token_list(args: argparse.Namespace) -> int:
    from api.service import tokens
    from api.service.db import session_scope

    with session_scope(read_only=True) as session:
        rows = tokens.all_tokens(session)
        print(f"{'id':>4}  {'owner':<20} {'created':<20} revoked")
        for t in rows:
            revoked = f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-"
            print(f"{t.id:>4}  {t.owner:<20} {t.created_at:%Y-%m-%d %H:%M:%S}  {revoked}")
    return 0


def token_revoke(args: argparse.Namespace) -> int:
    from api.service import tokens
    from api.service.db import session_scope

    with session_scope() as session:
        done = tokens.revoke(session, args.id)
    if not done:
        print(f"lsq token revoke: no active token {args.id}", file=sys.stderr)
        return 2
    print(f"token {args.id} revoked")
    return 0


LIMIT_OPTIONS = ("max_queued", "max_running", "max_job_tmacs", "max_job_seconds",
                 "max_storage_bytes")  # fmt: skip
DEFAULT = "default"


def _limit(text: str) -> float | str:
    if text == DEFAULT:
        return text
    value = float(text)  # argparse turns the ValueError into a usage error
    if not 0 <= value < 1e18:
        raise ValueError(text)
    return value


def owner_limits(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from api.service import owners
    from api.service.db import session_scope, upgrade_database
    from api.service.owners import Limits

    if not OWNER.fullmatch(args.owner):
        print("lsq owner limits: OWNER is 1-100 letters, digits, . _ @ -", file=sys.stderr)
        return 2
    upgrade_database()
    with session_scope() as session:
        row = owners.lock(session, args.owner)
        for name in LIMIT_OPTIONS:
            if (value := getattr(args, name)) is not None:
                cast = float if name in ("max_job_tmacs", "max_job_seconds") else int
                setattr(row, name, None if value == DEFAULT else cast(value))
        session.flush()
        limits = Limits.defaults(get_settings()).overridden_by(row)
        usage = owners.usage_of(session, args.owner)
        overridden = {n for n in LIMIT_OPTIONS if getattr(row, n) is not None}
    print(f"{args.owner}: limits (* set for this owner; the others are the service's)")
    for name, value in asdict(limits).items():
        print(f"  {name:<18} {value:>22,}{' *' if name in overridden else ''}")
    print(f"  usage: {usage.queued} queued, {usage.running} running, "
          f"{usage.storage_bytes:,} bytes stored")  # fmt: skip
    return 0


def db_upgrade(args: argparse.Namespace) -> int:
    from api.service.db import upgrade_database

    settings = get_settings()
    upgrade_database()
    print(f"lsq db upgrade: {safe_url(settings.db_url)} is at the latest revision")
    return 0


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
