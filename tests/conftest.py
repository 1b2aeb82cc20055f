"""What tests/unit and tests/core share, and the settings of a pytest-xdist run.

scripts/test runs the suite on xdist workers with `--dist loadscope`: a module runs whole on
one worker, so what its module-scoped fixtures build (an API, a worker, a browser, a trained
model) is built once. `loadgroup` would let modules be split further, but with pytest 9.2 it
silently groups nothing (pytest-dev/pytest-xdist#1386).
"""

import fcntl
import os
import tempfile

import pytest
from jobs import synthetic_spec


@pytest.fixture(scope="session")
def fp_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A full-precision model.pt trained for 3 epochs: the start of quantized runs. Trained once
    per run: xdist workers share it (the first one trains it, the others wait for it)."""
    from lsq.train import run

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' common folder
    out = root / "fp"
    with open(root / "fp.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "model.pt").exists():
            run(synthetic_spec(epochs=3), out)
    return str(out / "model.pt")


def pytest_configure(config: pytest.Config) -> None:
    # torch.compile's caches and their cost book for this run only (lsq.compile_cache): the
    # default, ~/.cache/lsq/compile, would make `auto` decide from what earlier runs measured
    os.environ.setdefault("LSQ_COMPILE_CACHE_DIR", tempfile.mkdtemp(prefix="lsq-test-compile-"))
    # xdist workers divide the cores between them, as a host's service workers do
    # (LSQ_WORKERS_PER_HOST): two torch thread pools each as wide as the machine thrash. The
    # processes the tests start inherit OMP_NUM_THREADS; a value already set is kept.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch

        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
