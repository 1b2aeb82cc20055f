"""Where torch.compile keeps what it compiled, and what compiling each graph cost.

torch keeps compiled graphs (inductor's FX graph cache, AOTAutograd's cache) in
TORCHINDUCTOR_CACHE_DIR. With them warm, compiling ResNet-20 costs seconds instead of half a
minute: only Dynamo's trace runs again. `use` puts that folder under a root every worker
shares (the service: the artifacts volume), named after torch's version and a hash of our
autograd function's code. torch cannot see a change to that code, which is why it caches graphs
holding custom autograd functions only when asked to; a new version of it gets a new folder,
so asking is safe. Folders no process used for STALE_DAYS are removed.

Two processes that compile one graph at once both compile it: torch writes every entry to a
temporary file and renames it into place, and so does the cost book (under a file lock), so
the later rename wins with equivalent content. Compiling twice costs time, never a broken cache.

The cost book (``costs.json`` beside torch's entries) remembers per graph its first (cold)
compile, its later (warm) ones, and an eager and a compiled step's seconds, for
`training.compile: auto`. A cache or a book that cannot be used is a warning, never a failed job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
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
# 31-49 s cold on 2 CPU cores), and the share of an eager step a compiled step saves
COLD_COMPILE, WARM_SHARE, SAVING = 60.0, 0.15, 0.25
MAX_SAVING = 0.9  # a measured saving is trusted up to this share
KEPT_GRAPHS = 500  # the book forgets the graphs least recently used beyond this
KEPT_COMPILES = 5  # warm compile times kept per graph, latest last
STALE_DAYS = 30  # cache folders unused this long (an older torch or quantizer) are removed
AUTOGRAD_CODE = ("quantizer.py",)  # our modules that define autograd functions

log = logging.getLogger(__name__)
_folder: Path | None = None


def code_hash() -> str:
    """A hash of the code of our autograd functions (what torch's cache keys cannot see)."""
    digest = hashlib.sha256()
    for name in AUTOGRAD_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:12]


def default_root() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    try:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home (an arbitrary container uid)
        home = Path(tempfile.gettempdir())
    return home / "lsq" / "compile"


def use(root: Path) -> Path:
    """Keep this process's compiled graphs under `root`. The first call wins: torch reads its
    cache folder once per process."""
    global _folder
    if _folder is None:
        folder = Path(root) / f"torch-{torch.__version__}-lsq-{code_hash()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()  # writable, not just there
        except OSError as e:  # no cache is slower, never a failed job
            log.warning("compile cache %s unusable (%s): compiling without it", folder, e)
            folder = Path(tempfile.mkdtemp(prefix="lsq-compile-"))
        else:
            _remove_stale(folder)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        # safe because the folder changes with that code (see the module's docstring)
        torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True
        _folder = folder
    return _folder


def _remove_stale(folder: Path) -> None:
    """Sibling folders of other torch or quantizer versions, their book untouched for long."""
    too_old = time.time() - STALE_DAYS * 86400
    for other in folder.parent.glob("torch-*-lsq-*"):
        book = other / "costs.json"
        try:  # another worker may be removing it too: its error is not this folder's
            used = book.stat().st_mtime if book.exists() else other.stat().st_mtime
        except OSError:
            continue
        if other != folder and used < too_old:
            shutil.rmtree(other, ignore_errors=True)


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
        self.lock = FileLock(f"{path}.lock", timeout=10)

    def recall(self, key: str) -> dict[str, Any]:
        return self._read().get(key, {})

    def remember(self, key: str, *, compile: float | None = None, **steps: float) -> None:
        """Record a compile's seconds (the first as `cold`, later ones as a list) and step
        seconds (averaged with what was known: one noisy step time does not decide alone).
        A book that cannot be written is left as it is: the job trains on."""
        try:
            with self.lock:
                book = self._read()
                entry = book.pop(key, {})
                if compile is not None and "cold" not in entry:
                    entry["cold"] = round(compile, 3)
                elif compile is not None:
                    kept = [*entry.get("compile", []), round(compile, 3)]
                    entry["compile"] = kept[-KEPT_COMPILES:]
                for name, seconds in steps.items():
                    known = entry.get(name)
                    entry[name] = round(seconds if known is None else (known + seconds) / 2, 6)
                entry["used"] = time.time()
                book[key] = entry  # last: the least recently used come first
                self._write(dict(list(book.items())[-KEPT_GRAPHS:]))
        except OSError as e:  # filelock's Timeout is one too
            log.warning("compile cost book %s not written: %s", self.path, e)

    def expected_compile(self, known: dict[str, Any]) -> float:
        """Seconds the next compile of a graph should take: one compiled here before compiles
        warm (its latest warm compile, else its cold one times the typical warm share); one
        never compiled here, the typical cold compile."""
        if known.get("compile"):
            return known["compile"][-1]
        cold, warm_share, _ = self.typical()
        return known["cold"] * warm_share if "cold" in known else cold

    def typical(self) -> tuple[float, float, float]:
        """Medians over the graphs measured (defaults before any): a cold compile's seconds,
        a warm compile's share of its cold one, the share of an eager step compiling saves."""
        book = self._read().values()
        cold = [e["cold"] for e in book if "cold" in e]
        warm = [e["compile"][-1] / e["cold"] for e in book if "cold" in e and e.get("compile")]
        saving = [1 - e["compiled"] / e["eager"] for e in book if {"eager", "compiled"} <= e.keys()]
        return (
            statistics.median(cold) if cold else COLD_COMPILE,
            statistics.median(warm) if warm else WARM_SHARE,
            min(MAX_SAVING, max(0.0, statistics.median(saving))) if saving else SAVING,
        )

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            book = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: start again rather than fail a job
        if not isinstance(book, dict):
            return {}
        return {k: e for k, v in book.items() if (e := _entry(v)) is not None}

    def _write(self, book: dict[str, dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".costs.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(book, f, indent=1)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _entry(value: Any) -> dict[str, Any] | None:
    """A book entry with only sound values (positive, finite seconds), or None."""
    if not isinstance(value, dict):
        return None

    def sound(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and 0 < x < math.inf

    entry = {k: value[k] for k in ("cold", "eager", "compiled") if sound(value.get(k))}
    compiles = value.get("compile")
    if isinstance(compiles, list) and compiles and all(sound(c) for c in compiles):
        entry["compile"] = compiles[-KEPT_COMPILES:]
    if sound(value.get("used")):
        entry["used"] = value["used"]
    return entry


def book() -> CostBook:
    return CostBook(folder() / "costs.json")
