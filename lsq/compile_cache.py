"""Where torch.compile keeps what it compiled, and what compiling each graph cost.

torch keeps compiled graphs (inductor's FX graph cache, AOTAutograd's cache) in
TORCHINDUCTOR_CACHE_DIR. With them warm, compiling ResNet-20 costs seconds instead of half a
minute: only Dynamo's trace runs again. `use` puts that folder under a root every worker
shares (the service: the artifacts volume), named after torch's version and a hash of this
package's code. torch cannot see a change to our autograd functions' code, which is why it
caches graphs holding custom autograd functions only when asked to; a new version of our code
gets a new folder, so asking is safe.

Two processes that compile one graph at once both compile it: torch writes every entry to a
temporary file and renames it into place, and so does the cost book (under a file lock), so
the later rename wins with equivalent content. Compiling twice costs time, never a broken cache.

The cost book (``costs.json`` beside torch's entries) remembers per graph the seconds each
compile took and the seconds an eager and a compiled step took, for `training.compile: auto`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

ENV = "LSQ_COMPILE_CACHE_DIR"  # the root, where a process has no other (the service sets it)
# What is expected before anything was measured: a first compile's seconds, the share of it
# a second compile of the same graph takes (the cache warm: ResNet-20 took 3-5 s against
# 35-49 s cold on 2 CPU cores), and the share of an eager step a compiled step saves
COLD_COMPILE, WARM_SHARE, SAVING = 60.0, 0.15, 0.25
KEPT_GRAPHS = 500  # the book forgets the graphs least recently used beyond this
KEPT_COMPILES = 5  # compile times kept per graph, latest last

log = logging.getLogger(__name__)
_folder: Path | None = None


def code_hash() -> str:
    """A hash of this package's Python code (what torch's cache keys cannot see)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def default_root() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsq" / "compile"


def use(root: Path) -> Path:
    """Keep this process's compiled graphs under `root`. The first call wins: torch reads its
    cache folder once per process."""
    global _folder
    if _folder is None:
        folder = Path(root) / f"torch-{torch.__version__}-lsq-{code_hash()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # no cache is slower, never a failed job
            log.warning("compile cache %s unusable (%s): compiling without it", folder, e)
            folder = Path(tempfile.mkdtemp(prefix="lsq-compile-"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        # safe because the folder changes with our code (see the module's docstring)
        torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True
        _folder = folder
    return _folder


def folder() -> Path:
    """This process's cache folder (under `default_root()` unless `use` named another)."""
    return _folder or use(default_root())


def graph_key(module: torch.nn.Module, batch: torch.Tensor, amp: torch.dtype | None) -> str:
    """What decides the graph a training step compiles to, and how fast it runs: the module
    (its repr names every layer and quantizer), the batch's shape, AMP and the device."""
    device = batch.device
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{device.type}, {torch.get_num_threads()} threads"
    text = f"{module!r}|{tuple(batch.shape)}|{batch.dtype}|{amp}|{where}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class CostBook:
    """Per graph: compile seconds, eager and compiled step seconds. Read and written whole,
    under a file lock, and replaced atomically: a reader never sees half a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = FileLock(f"{path}.lock")

    def recall(self, key: str) -> dict[str, Any]:
        return self._read().get(key, {})

    def remember(self, key: str, *, compile: float | None = None, **steps: float) -> None:
        """Record a compile's seconds (kept as a list) and step seconds (kept as the latest).
        A book that cannot be written is left as it is: the job trains on."""
        try:
            with self.lock:
                book = self._read()
                entry = book.pop(key, {})
                if compile is not None:
                    kept = [*entry.get("compile", []), round(compile, 3)]
                    entry["compile"] = kept[-KEPT_COMPILES:]
                entry.update({name: round(s, 6) for name, s in steps.items()}, used=time.time())
                book[key] = entry  # last: the least recently used come first
                self._write(dict(list(book.items())[-KEPT_GRAPHS:]))
        except OSError as e:
            log.warning("compile cost book %s not written: %s", self.path, e)

    def expected_compile(self, known: dict[str, Any]) -> float:
        """Seconds the next compile of a graph should take: one compiled here before compiles
        warm (its latest warm compile, else its cold one times the typical warm share); one
        never compiled here, the typical cold compile."""
        compiles = known.get("compile") or []
        if len(compiles) > 1:
            return compiles[-1]
        cold, warm_share, _ = self.typical()
        return compiles[0] * warm_share if compiles else cold

    def typical(self) -> tuple[float, float, float]:
        """Medians over the graphs measured (defaults before any): a cold compile's seconds,
        a warm compile's share of its cold one, the share of an eager step compiling saves."""
        book = self._read().values()
        cold = [e["compile"][0] for e in book if e.get("compile")]
        warm = [e["compile"][-1] / e["compile"][0] for e in book if len(e.get("compile", [])) > 1]
        saving = [
            1 - e["compiled"] / e["eager"] for e in book if e.get("eager") and "compiled" in e
        ]
        return (
            statistics.median(cold) if cold else COLD_COMPILE,
            statistics.median(warm) if warm else WARM_SHARE,
            statistics.median(saving) if saving else SAVING,
        )

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            book = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: start again rather than fail a job
        return book if isinstance(book, dict) else {}

    def _write(self, book: dict[str, dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(book, indent=1))
        os.replace(tmp, self.path)


def book() -> CostBook:
    return CostBook(folder() / "costs.json")
