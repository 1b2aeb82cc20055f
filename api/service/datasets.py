"""What the workers can read: the built-in datasets and the image folders under LSQ_DATA_ROOTS.

The API and the workers see the same data folders (compose mounts one volume in both). A
listing walks at most MAX_FOLDERS folders, LISTING_DEPTH deep, counts class folders and never
images, and is kept for LISTING_SECONDS: a flood of requests costs one walk a minute.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from api.service.config import Settings
from lsq.image_files import EXTENSIONS, MAX_CLASSES, readable_name
from lsq.spec import FASHION_MNIST_ROOT

LISTING_SECONDS = 60.0
LISTING_DEPTH = 3  # a data root's folder, its folders, and theirs
MAX_FOLDERS = 2000  # folders looked into per walk
PEEK = 64  # entries of a folder read to tell what it holds


@dataclass(frozen=True)
class FoundDataset:
    """A dataset a job can name: `name`, and `root` where it needs one."""

    name: str
    root: str | None
    classes: int | None
    layout: str


_cache: dict[tuple[str, ...], tuple[float, list[FoundDataset]]] = {}
_lock = threading.Lock()


def listing(settings: Settings) -> list[FoundDataset]:
    """The datasets under the settings' data roots, from a walk at most a minute old."""
    key = tuple(map(str, settings.roots))
    with _lock:  # one walk at a time; the requests behind it get its answer
        found = _cache.get(key)
        if found is None or time.monotonic() - found[0] > LISTING_SECONDS:
            found = _cache[key] = (time.monotonic(), _walk(settings.roots))
    return found[1]


def _walk(roots: list[Path]) -> list[FoundDataset]:
    found = [FoundDataset("synthetic", None, 10, "made in memory")]
    budget = [MAX_FOLDERS]
    for root in roots:
        _visit(root, LISTING_DEPTH, budget, found)
    return found


def _visit(folder: Path, depth: int, budget: list[int], found: list[FoundDataset]) -> None:
    if depth == 0 or budget[0] <= 0:
        return
    budget[0] -= 1
    if not readable_name(str(folder)):  # a path no JSON can carry
        return
    entries = _peek(folder)
    names = {e.name for e in entries}
    folders = sorted(
        e.name
        for e in entries
        if _is_dir(e) and not e.name.startswith(".") and readable_name(e.name)
    )
    if {"data_batch_1", "test_batch"} <= names:
        found.append(FoundDataset("cifar10", str(folder), 10, "CIFAR-10 python batches"))
        return
    if any(n.startswith("train-images-idx3-ubyte") for n in names):
        root = None if str(folder) == FASHION_MNIST_ROOT else str(folder)
        found.append(FoundDataset("fashion-mnist", root, 10, "IDX files"))
        return
    if {"train", "val"} <= set(folders) and _holds_images_below(folder / "train"):
        classes = _count_folders(folder / "train")
        found.append(FoundDataset("image_folder", str(folder), classes, "train/ and val/"))
        return
    if folders and _holds_images(folder / folders[0]):
        classes = _count_folders(folder)
        found.append(FoundDataset("image_folder", str(folder), classes, "split by val_fraction"))
        return
    for name in folders:
        _visit(folder / name, depth - 1, budget, found)


def _peek(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return [entry for _, entry in zip(range(PEEK), it, strict=False)]
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _holds_images(folder: Path) -> bool:
    return any(Path(e.name).suffix.lower() in EXTENSIONS for e in _peek(folder))


def _holds_images_below(folder: Path) -> bool:
    firsts = sorted(e.name for e in _peek(folder) if _is_dir(e))[:1]
    return bool(firsts) and _holds_images(folder / firsts[0])


def _count_folders(folder: Path) -> int | None:
    """Its class folders, or None past MAX_CLASSES (the job would refuse it)."""
    count = 0
    try:
        with os.scandir(folder) as it:
            for entry in it:
                count += _is_dir(entry) and not entry.name.startswith(".")
                if count > MAX_CLASSES:
                    return None
    except OSError:
        return None
    return count
