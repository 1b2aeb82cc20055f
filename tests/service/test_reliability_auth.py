"""Rate limits under a hostile client: one address guessing tokens does not lock out the
valid tokens used from that same address."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import httpx

from .conftest import bearer
from .test_security import Api


def flood(url: str, stop: threading.Event, codes: list[int]) -> None:
    """Random tokens from this address, as fast as they are answered, until `stop`."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            guess = bearer("lsq_" + secrets.token_urlsafe(32))
            codes.append(client.get("/v1/jobs", headers=guess).status_code)


def test_bad_guesses_from_an_address_do_not_lock_out_its_valid_tokens(tmp_path: Path) -> None:
    strict = Api(tmp_path, LSQ_REQUESTS_PER_SECOND="5", LSQ_REQUEST_BURST="10")
    stop, bad = threading.Event(), []
    guesser = threading.Thread(target=flood, args=(strict.url, stop, bad))
    try:
        with strict.client("ann") as ann, strict.client("bob") as bob:
            guesser.start()
            deadline = time.monotonic() + 60
            while 429 not in bad:  # the guesser is past its address's rate
                assert time.monotonic() < deadline and guesser.is_alive(), bad[-5:]
                time.sleep(0.05)
            good, start = [], len(bad)
            for _ in range(12):  # well within each token's own rate (5 a second)
                good += [ann.get("/v1/jobs").status_code, bob.get("/v1/jobs").status_code]
                time.sleep(0.4)
            during = bad[start:]
        assert good == [200] * 24
        assert 429 in during and set(during) <= {401, 429}  # the guesser is still slowed
    finally:
        stop.set()
        guesser.join(timeout=60)
        strict.proc.stop()
