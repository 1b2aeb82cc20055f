"""Datasets in their standard on-disk formats, plus a synthetic one for tests and demos.

Each loader returns the train and test sets and a DatasetInfo (channels, size, classes) from
which the network is built. CIFAR-10, Fashion-MNIST and synthetic sets are held as uint8
tensors (TensorImages) whose augmentation and normalisation run on whole batches on the
training device (lsq.batches); ImageNet is read from files through torchvision transforms.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from .spec import FASHION_MNIST_ROOT, DatasetSpec


class DatasetError(ValueError):
    """A dataset is missing or not in the layout its loader reads."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    image_size: int
    classes: tuple[str, ...] = ()  # the class names, where the data has them
    mean: tuple[float, ...] = ()  # the normalisation the images get (an export's user needs it)
    std: tuple[float, ...] = ()
    skipped: int = 0  # image files that did not decode (image_folder)

    def example(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """One blank image of this shape: what a network is traced with (lsq.graph)."""
        return torch.zeros(1, self.in_channels, self.image_size, self.image_size, device=device)


@dataclass(frozen=True)
class Augment:
    """Training augmentation: a random crop of the image zero-padded by `pad` pixels on every
    side, and a horizontal flip with probability one half."""

    pad: int = 0
    flip: bool = False

    def draw(self, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop offsets (n, 2) and flips (n,) for n images, on the CPU."""
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        flips = (
            torch.rand(n, generator=generator) < 0.5
            if self.flip
            else torch.zeros(n, dtype=torch.bool)
        )
        return offsets, flips

    def apply(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop and flip a uint8 batch (N, C, H, W), each image by its own offsets and flip."""
        if self.pad:
            n, c, h, w = x.shape
            padded = torch.nn.functional.pad(x, (self.pad,) * 4)
            rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            x = padded[batch, torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
        if self.flip:
            x = torch.where(flips[:, None, None, None], x.flip(3), x)
        return x


class TensorImages(Dataset):
    """Images held as a uint8 tensor (N, C, H, W) with integer labels, normalised by `mean` and
    `std` and, for training, augmented: both as batched tensor ops on the images' device
    (``batch``), so a training set that fits in memory needs no DataLoader (lsq.loop)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: list[float],
        std: list[float],
        augment: Augment | None = None,
    ) -> None:
        self.images, self.targets, self.augment = images, labels, augment
        self.mean, self.std = mean, std
        # on the images' device once, not per batch (the training loop's hot path)
        self._mean = torch.as_tensor(mean, device=images.device).view(-1, 1, 1)
        self._std = torch.as_tensor(std, device=images.device).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """One sample, augmented with torch's global RNG (the DataLoader path)."""
        x = self.images[i : i + 1]
        draws = self.augment.draw(1, None) if self.augment else None
        return self.batch(x, draws)[0], int(self.targets[i])

    def batch(
        self, x: torch.Tensor, draws: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """A uint8 batch of these images, augmented with `draws` (Augment.draw) when given, as
        normalised float32 (the same operations as torchvision's ToDtype and Normalize)."""
        if self.augment is not None and draws is not None:
            offsets, flips = (d.to(x.device, non_blocking=True) for d in draws)
            x = self.augment.apply(x, offsets, flips)
        return x.to(torch.float32).mul_(1.0 / 255).sub_(self._mean).div_(self._std)

    def to(self, device: torch.device) -> TensorImages:
        """These images and labels on `device` (the same object when already there)."""
        if self.images.device == device:
            return self
        images, labels = self.images.to(device), self.targets.to(device)
        return TensorImages(images, labels, self.mean, self.std, self.augment)


# ---------------------------------------------------------------- CIFAR-10 (python pickle batches)

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)  # fmt: skip


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR-10 batch holds (dicts, lists, ints, strings and numpy arrays):
    a crafted file that names any other callable is refused, never run."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def _cifar_batches(root: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="latin1").load()
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels.append(torch.as_tensor(batch["labels"], dtype=torch.long))
        except FileNotFoundError:
            raise DatasetError(
                f"CIFAR-10: {path} not found. Expected the python version's pickle batches "
                f"(data_batch_1..5, test_batch) in {root} or {root}/cifar-10-batches-py"
            ) from None
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as e:
            raise DatasetError(
                f"CIFAR-10: {path} is not a CIFAR-10 python batch (a pickled dict with 'data' "
                f"of shape (N, 3072) uint8 and 'labels'): {e}"
            ) from None
        images.append(torch.from_numpy(data))
    return torch.cat(images), torch.cat(labels)


def cifar10(root: Path) -> tuple[Dataset, Dataset, DatasetInfo]:
    train_x, train_y = _cifar_batches(root, [f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = _cifar_batches(root, ["test_batch"])
    return (
        TensorImages(train_x, train_y, CIFAR_MEAN, CIFAR_STD, Augment(pad=4, flip=True)),
        TensorImages(test_x, test_y, CIFAR_MEAN, CIFAR_STD),
        DatasetInfo(10, 3, 32, CIFAR_CLASSES, tuple(CIFAR_MEAN), tuple(CIFAR_STD)),
    )


# ---------------------------------------- Fashion-MNIST (IDX, gzipped or not)

FASHION_MEAN, FASHION_STD = [0.2860], [0.3530]
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): magic 0x0000 0x08 ndim, big-endian int32 dims, uint8 data."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # not gzip, cut short, corrupt
            raise DatasetError(f"{path} is not a complete gzip file: {e}") from None
    if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: IDX header cut short ({len(raw)} bytes, {ndim} dims)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"Fashion-MNIST: {root / stem}[.gz] not found. Expected the IDX files "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        f"t10k-labels-idx1-ubyte (gzipped or not) in {root}"
        + (" (apt-get install dataset-fashion-mnist)" if str(root) == FASHION_MNIST_ROOT else "")
    )


def fashion_mnist(root: Path) -> tuple[Dataset, Dataset, DatasetInfo]:
    def split(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"Fashion-MNIST in {root}: images {x.shape} and labels {y.shape}")
        return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))

    (train_x, train_y), (test_x, test_y) = split("train"), split("t10k")
    return (
        TensorImages(train_x, train_y, FASHION_MEAN, FASHION_STD, Augment(pad=2, flip=True)),
        TensorImages(test_x, test_y, FASHION_MEAN, FASHION_STD),
        DatasetInfo(10, 1, 28, FASHION_CLASSES, tuple(FASHION_MEAN), tuple(FASHION_STD)),
    )


# ---------------------------------------- ImageNet (train/ and val/ class folders)

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def imagenet(root: Path) -> tuple[Dataset, Dataset, DatasetInfo]:
    norm = [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    train_tf = v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), *norm])
    test_tf = v2.Compose([v2.Resize(256), v2.CenterCrop(224), *norm])
    sets = []
    for split, tf in (("train", train_tf), ("val", test_tf)):
        folder = root / split
        try:
            sets.append(torchvision.datasets.ImageFolder(str(folder), transform=tf))
        except (FileNotFoundError, OSError) as e:
            raise DatasetError(
                f"ImageNet: {folder}: {e}. Expected {root}/train/<class>/*.JPEG and "
                f"{root}/val/<class>/*.JPEG (one folder per class, the same classes in both)"
            ) from None
    train, test = sets
    if train.classes != test.classes:
        raise DatasetError(f"ImageNet: {root}/train and {root}/val have different class folders")
    stats = tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    return train, test, DatasetInfo(len(train.classes), 3, 224, tuple(train.classes), *stats)


# ---------------------------------------------------------------- synthetic (in memory, learnable)


def synthetic(
    train_size: int = 2048, test_size: int = 512, classes: int = 10, size: int = 16, seed: int = 0
) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Each class is a fixed random 3-channel pattern; a sample is its pattern plus noise.

    Deterministic for a seed and learnable well above chance in one or two epochs.
    """
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(classes, 3, size, size, generator=g)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % classes
        labels = labels[torch.randperm(n, generator=g)]
        images = torch.empty(n, 3, size, size, dtype=torch.uint8)
        for start in range(0, n, 1024):  # float temporaries a chunk at a time, not n images
            chunk = labels[start : start + 1024]
            noise = torch.rand(len(chunk), 3, size, size, generator=g)
            images[start : start + 1024] = ((0.4 * patterns[chunk] + 0.6 * noise) * 255).round()
        return images, labels

    mean, std = [0.5] * 3, [0.25] * 3
    (train_x, train_y), (test_x, test_y) = make(train_size), make(test_size)
    info = DatasetInfo(classes, 3, size)
    return TensorImages(train_x, train_y, mean, std), TensorImages(test_x, test_y, mean, std), info


# ---------------------------------------------------------------- entry point

LAYOUTS = {
    "cifar10": "CIFAR-10's python batches data_batch_1..5 and test_batch",
    "imagenet": "train/<class>/*.JPEG and val/<class>/*.JPEG",
    "fashion-mnist": "the IDX files train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte[.gz]",
    "image_folder": "<class>/<image> files, or train/<class>/ and val/<class>/",
}


def in_memory(dataset: Dataset) -> tuple[TensorImages, torch.Tensor] | None:
    """The images a set holds in memory and the indices it uses of them (a subset's), or None
    for a set read from files (ImageNet)."""
    if isinstance(dataset, TensorImages):
        return dataset, torch.arange(len(dataset), device=dataset.images.device)
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorImages):
        base = dataset.dataset
        return base, torch.as_tensor(dataset.indices, device=base.images.device)
    return None


def on_device(dataset: Dataset, device: torch.device) -> Dataset:
    """The set with its in-memory images moved to `device` once (a file-backed set as it is)."""
    if isinstance(dataset, TensorImages):
        return dataset.to(device)
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorImages):
        subset = Subset(dataset.dataset.to(device), dataset.indices)
        subset.targets = dataset.targets
        return subset
    return dataset


def targets(dataset: Dataset) -> torch.Tensor:
    return torch.as_tensor(dataset.targets)


def balanced_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """A fixed, seeded subset with (as near as possible) the same count of every class."""
    labels = targets(dataset)
    if size >= len(labels):
        return dataset
    g = torch.Generator().manual_seed(seed)
    per_class = [
        (labels == c).nonzero().flatten()[torch.randperm(int((labels == c).sum()), generator=g)]
        for c in labels.unique()
    ]
    # Round-robin over classes so every class gets size // classes (+1 for the first few).
    order = torch.stack(
        [
            torch.nn.functional.pad(p, (0, max(map(len, per_class)) - len(p)), value=-1)
            for p in per_class
        ],
        dim=1,
    ).flatten()
    chosen = order[order >= 0][:size]
    subset = Subset(dataset, chosen.sort().values.tolist())
    subset.targets = labels[subset.indices]
    return subset


def load_datasets(spec: DatasetSpec, seed: int = 0) -> tuple[Dataset, Dataset, DatasetInfo]:
    """The train and test sets a dataset spec names, with its optional fixed subsets applied."""
    if spec.name == "synthetic":
        size = spec.image_size or 16
        return synthetic(spec.train_size or 2048, spec.test_size or 512, size=size)
    root = spec.folder()
    if root is None:
        raise DatasetError(
            f"dataset {spec.name!r} needs a root folder (dataset.root) holding {LAYOUTS[spec.name]}"
        )
    try:
        found = root.is_dir()
    except OSError as e:  # a name too long, say
        raise DatasetError(
            f"dataset {spec.name!r}: folder {str(root)[:200]}: {e.strerror}"
        ) from None
    if not found:
        raise DatasetError(
            f"dataset {spec.name!r}: folder {root} does not exist; expected it to hold "
            f"{LAYOUTS[spec.name]}"
        )
    if spec.name == "image_folder":
        from . import image_folder  # it imports this module

        found = image_folder.load(spec, root, seed)
        return found.train, found.test, found.info
    loader = {"cifar10": cifar10, "imagenet": imagenet, "fashion-mnist": fashion_mnist}[spec.name]
    train, test, info = loader(root)
    if spec.train_size:
        train = balanced_subset(train, spec.train_size, seed)
    if spec.test_size:
        test = balanced_subset(test, spec.test_size, seed + 1)
    return train, test, info
