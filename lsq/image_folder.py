"""A user's own labelled images: a folder of class folders, as torchvision's ImageFolder reads.

    root/train/<class>/*.png and root/val/<class>/*.png     (the test set is val/)
    root/<class>/*.jpg                                      (split by a seeded fraction)

Files are found without following a link out of the root, and decoded in a bounded way: an
image whose header claims over 64 Mpx is refused before it is decoded (Pillow's own guard stays
behind it), JPEGs decode at a reduced scale when they can, and
every image is converted to grey or RGB, scaled and centre-cropped to `image_size`. A file
that does not decode is skipped and counted, or fails the job, as the spec says. A set whose
decoded images fit LSQ_DATA_MEMORY_BYTES is held in memory (lsq.data.TensorImages, batches
straight from the device); a larger one is decoded per image by a DataLoader.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .data import Augment, DatasetError, DatasetInfo, TensorImages, balanced_subset
from .image_files import DEFAULT_MEMORY_BYTES, EXTENSIONS, MAX_CLASSES, readable_name
from .spec import DatasetSpec

MAX_FILES = 10_000_000
MAX_PIXELS = 64 << 20  # an image's pixels: more is a decompression bomb, refused
STATS_SAMPLE = 2048  # training images that measure mean and std when the set is not in memory

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Files(Dataset):
    """Image files and their class indices (what a subset is drawn from)."""

    paths: list[Path] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def pick(self, indices: list[int]) -> Files:
        return Files([self.paths[i] for i in indices], [self.targets[i] for i in indices])


@dataclass
class Loaded:
    """What an image folder gave: the two sets, and their shape, names and skipped files."""

    train: Dataset
    test: Dataset
    info: DatasetInfo


def memory_budget() -> int:
    """LSQ_DATA_MEMORY_BYTES: decoded images (uint8) up to this are held in memory."""
    try:
        return int(os.environ.get("LSQ_DATA_MEMORY_BYTES", DEFAULT_MEMORY_BYTES))
    except ValueError:
        return DEFAULT_MEMORY_BYTES


def load(spec: DatasetSpec, root: Path, seed: int) -> Loaded:
    """The train and test sets of the image folder `root` (the spec's subsets applied)."""
    size, channels = spec.image_size or 32, spec.channels or 3
    classes, train, test = _split(root, spec.val_fraction or 0.2, seed)
    train, test = _subset(train, spec.train_size, seed), _subset(test, spec.test_size, seed + 1)
    decode = _Decoder(size, channels, fail=spec.unreadable == "fail")
    budget = memory_budget()
    held = (len(train) + len(test)) * channels * size * size <= budget
    skipped: list[str] = []
    if held:
        train_x, train_y = decode.all(train, skipped)
        test_x, test_y = decode.all(test, skipped)
    else:  # decoded once now, so a file that fails is skipped here, not mid-epoch
        train, test = decode.readable(train, skipped), decode.readable(test, skipped)
    if spec.mean is not None and spec.std is not None:
        mean, std = list(spec.mean), list(spec.std)
    else:
        mean, std = _stats(train_x if held else decode.sample(train, seed))
    augment = Augment(pad=max(1, size // 8), flip=True) if spec.augment else None
    described = tuple(classes), tuple(mean), tuple(std), len(skipped)
    info = DatasetInfo(len(classes), channels, size, *described)
    for reason in skipped[:5]:
        log.warning("image_folder: skipped %s", reason)
    if held:
        train_set = TensorImages(train_x, train_y, mean, std, augment)
        return Loaded(train_set, TensorImages(test_x, test_y, mean, std), info)
    train_set = DecodedFiles(train, decode, mean, std, augment)
    return Loaded(train_set, DecodedFiles(test, decode, mean, std), info)


def _subset(files: Files, size: int | None, seed: int) -> Files:
    """A seeded class-balanced subset (lsq.data.balanced_subset), picked before decoding."""
    chosen = balanced_subset(files, size, seed) if size else files
    return files if chosen is files else files.pick(chosen.indices)


def _split(root: Path, val_fraction: float, seed: int) -> tuple[list[str], Files, Files]:
    halves = [(root / h).is_dir() for h in ("train", "val")]
    if any(halves) and not all(halves):
        raise DatasetError(
            f"image_folder: {root} has {'train/' if halves[0] else 'val/'} without "
            f"{'val/' if halves[0] else 'train/'}: give both, each of class folders, or only "
            "class folders (split by val_fraction)"
        )
    if all(halves):
        classes, train = _scan(root / "train", root)
        val_classes, test = _scan(root / "val", root)
        if val_classes != classes:
            missing = sorted(set(classes) ^ set(val_classes))[:5]
            raise DatasetError(
                f"image_folder: {root}/train and {root}/val have different class folders "
                f"(not in both: {', '.join(missing)})"
            )
        return classes, train, test
    classes, files = _scan(root, root)
    g = torch.Generator().manual_seed(seed)
    by_class: list[list[int]] = [[] for _ in classes]
    for i, c in enumerate(files.targets):
        by_class[c].append(i)
    train, test = Files(), Files()
    for c, mine in enumerate(by_class):
        order = [mine[k] for k in torch.randperm(len(mine), generator=g).tolist()]
        held_out = max(1, round(len(order) * val_fraction))
        if held_out >= len(order):
            raise DatasetError(
                f"image_folder: class {classes[c]!r} has {len(order)} image(s): too few to hold "
                f"out val_fraction {val_fraction} for testing and train on the rest"
            )
        for target, part in ((test, order[:held_out]), (train, order[held_out:])):
            target.paths += [files.paths[i] for i in part]
            target.targets += [c] * len(part)
    return classes, train, test


def _scan(folder: Path, root: Path) -> tuple[list[str], Files]:
    """The class folders of `folder` (sorted; links left out) and their image files, found
    recursively without following a link out of the root."""
    real_root = root.resolve()
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise DatasetError(f"image_folder: cannot list {folder}: {e.strerror}") from None
    classes = [
        d.name for d in entries if d.is_dir() and not d.is_symlink() and not d.name.startswith(".")
    ]
    if not classes:
        raise DatasetError(
            f"image_folder: {folder} holds no class folders; expected <class>/<image> files, "
            "or train/<class>/ and val/<class>/"
        )
    if len(classes) > MAX_CLASSES:
        raise DatasetError(f"image_folder: {folder} holds more than {MAX_CLASSES} class folders")
    if odd := [c for c in classes if not readable_name(c)]:
        raise DatasetError(
            f"image_folder: class folder names must be printable UTF-8 text: {odd[0]!r} in "
            f"{folder} is not"
        )
    files = Files()
    for c, name in enumerate(classes):
        found = len(files)
        for dirpath, dirnames, filenames in os.walk(folder / name):  # links to folders: not walked
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if path.suffix.lower() not in EXTENSIONS or filename.startswith("."):
                    continue
                if not path.resolve().is_relative_to(real_root):  # a link out of the root
                    continue
                files.paths.append(path)
                files.targets.append(c)
                if len(files) > MAX_FILES:
                    raise DatasetError(f"image_folder: {folder} holds over {MAX_FILES} images")
        if len(files) == found:
            raise DatasetError(
                f"image_folder: class folder {name!r} in {folder} holds no images (images "
                f"are {', '.join(sorted(EXTENSIONS))})"
            )
    return classes, files


class _Decoder:
    """Files to uint8 tensors (C, size, size), bounded; unreadable ones skipped or raised."""

    def __init__(self, size: int, channels: int, fail: bool) -> None:
        self.size, self.mode, self.fail = size, "L" if channels == 1 else "RGB", fail

    def one(self, path: Path) -> torch.Tensor:
        with Image.open(path) as image:  # the header only (Pillow's own guard: 2 x 89 Mpx)
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(
                    f"a decompression bomb? {image.width} x {image.height} pixels, more than "
                    f"{MAX_PIXELS:,}"
                )
            image.draft(self.mode, (self.size, self.size))  # JPEG: decode at 1/2..1/8
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA")  # transparency first, then the mode
            fitted = ImageOps.fit(image.convert(self.mode), (self.size, self.size))
        pixels = torch.from_numpy(np.asarray(fitted, dtype=np.uint8).copy())
        return pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1).contiguous()

    def safe(self, path: Path, skipped: list[str]) -> torch.Tensor | None:
        try:
            return self.one(path)
        # A user's file can make a decoder raise anything: it is data, counted, never a crash.
        except Exception as e:  # noqa: BLE001
            reason = f"{path}: {type(e).__name__}: {str(e)[:200]}"
            if self.fail:
                raise DatasetError(f"image_folder: unreadable image {reason}") from None
            skipped.append(reason)
            return None

    def all(self, files: Files, skipped: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every file decoded, the unreadable left out."""
        images = self._each(files, lambda p: self.safe(p, skipped))
        kept = [i for i, x in enumerate(images) if x is not None]
        if not kept:
            raise DatasetError(f"image_folder: none of {len(files)} images decoded: {skipped[:1]}")
        x = torch.stack([images[i] for i in kept])
        return x, torch.tensor([files.targets[i] for i in kept])

    def readable(self, files: Files, skipped: list[str]) -> Files:
        """The files that decode (each decoded once, then let go), the others skipped."""
        decoded = self._each(files, lambda p: self.safe(p, skipped) is not None)
        return files.pick([i for i, ok in enumerate(decoded) if ok])

    @staticmethod
    def _each(files: Files, decode: Callable[[Path], T]) -> list[T]:
        """`decode` of every file, in threads (Pillow decodes without the GIL), in order."""
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            return list(pool.map(decode, files.paths))

    def sample(self, files: Files, seed: int) -> torch.Tensor:
        """STATS_SAMPLE of the files, decoded (all of them readable: checked already)."""
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))
        return self.all(files.pick(order[:STATS_SAMPLE].tolist()), [])[0]


def _stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, a chunk at a time."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    square = torch.zeros_like(total)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64).div_(255)
        total += x.sum((0, 2, 3))
        square += x.square().sum((0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (square / n - mean.square()).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


class DecodedFiles(Dataset):
    """An image folder too large for memory: each image decoded when the DataLoader asks (each
    decoded once already, at load: one that fails now, changed since, fails the job)."""

    def __init__(
        self,
        files: Files,
        decoder: _Decoder,
        mean: list[float],
        std: list[float],
        augment: Augment | None = None,
    ) -> None:
        self.files, self.decoder, self.targets = files, decoder, files.targets
        self.mean, self.std, self.augment = mean, std, augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.files.paths[i]
        try:
            x = self.decoder.one(path)
        except Exception as e:  # noqa: BLE001 (see _Decoder.safe)
            raise DatasetError(f"image_folder: unreadable image {path}: {e}") from None
        label = torch.tensor([self.targets[i]])
        return TensorImages(x[None], label, self.mean, self.std, self.augment)[0]
