"""`python -m api.web`: the API alone, on the server's bounds (api.web.server). `lsq api`
becomes this process, so that nothing below the HTTP face imports it."""

from __future__ import annotations

import argparse
import logging
import sys

from api.service.cli import API_HELP, api_options
from api.web.server import run


def main(argv: list[str] | None = None) -> int:
    p = api_options(argparse.ArgumentParser(prog="lsq api", description=API_HELP))
    args = p.parse_args(argv)
    if args.access_log == "writes":
        logging.getLogger("uvicorn.access").addFilter(_writes_and_failures)
    run(
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level in ("debug", "info"),
    )
    return 0


def _writes_and_failures(record: logging.LogRecord) -> bool:
    """uvicorn's access-log record args: (client, method, path, http version, status)."""
    method, status = record.args[1], record.args[4]  # type: ignore[index]
    return method not in ("GET", "HEAD") or int(status) >= 400


if __name__ == "__main__":
    sys.exit(main())
