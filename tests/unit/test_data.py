"""lsq.data: every loader on small files written in the dataset's real on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lsq.data import (
    FASHION_MNIST_ROOT,
    DatasetError,
    DatasetInfo,
    TensorImages,
    cifar10,
    fashion_mnist,
    imagenet,
    load_datasets,
    read_idx,
    synthetic,
)
from lsq.spec import DatasetSpec

# The usual per-channel statistics of each training set (written out, not imported, so that a
# wrong constant in lsq.data shows up as a wrong normalised value).
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
FASHION_MEAN, FASHION_STD = [0.2860], [0.3530]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# ================================================================ CIFAR-10

CIFAR_PER_BATCH = 20  # 2 images of every class per batch: 100 train images, 20 test images
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` opcodes (SHORT_BINSTRING / BINSTRING).

    The real CIFAR-10 python batches were written by Python 2's cPickle: their keys and the
    numpy array's buffer are py2 byte strings, which only load on Python 3 with an 8-bit
    encoding (the loader's encoding='latin1' turns the keys into str 'data', 'labels').
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def shape(info: DatasetInfo) -> tuple[int, int, int]:
    return info.num_classes, info.in_channels, info.image_size


def _dump_py2(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _dump_py3(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_batch(k: int) -> dict:
    """Batch k: random pixels (seeded by k), labels a seeded permutation of 2 x range(10)."""
    rng = np.random.default_rng(100 + k)
    data = rng.integers(0, 256, size=(CIFAR_PER_BATCH, 3072), dtype=np.uint8)
    data[:, 0] = k  # red of pixel (0, 0) says which batch an image came from
    labels = [int(v) for v in rng.permutation(np.arange(CIFAR_PER_BATCH) % 10)]
    name = CIFAR_BATCHES[k]
    return {
        "batch_label": f"{'testing' if k == 5 else 'training'} batch {k + 1} of 5",
        "labels": labels,
        "data": data,
        "filenames": [f"{name}_{i:04d}.png" for i in range(CIFAR_PER_BATCH)],
    }


def write_cifar(folder: Path, dump=_dump_py2, keys=None) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = [_cifar_batch(k) for k in range(6)]
    for name, batch in zip(CIFAR_BATCHES, batches, strict=True):
        dump(batch if keys is None else {keys(key): v for key, v in batch.items()}, folder / name)
    return batches


def _chw(row: np.ndarray, c: int, y: int, x: int) -> int:
    """The CIFAR python format: 1024 red, then 1024 green, then 1024 blue, each row-major."""
    return int(row[c * 1024 + y * 32 + x])


@pytest.fixture
def cifar_root(tmp_path: Path) -> tuple[Path, list[dict]]:
    return tmp_path, write_cifar(tmp_path)


def test_the_py2_writer_emits_py2_strings(tmp_path: Path) -> None:
    """Guards the fixture: the files hold py2 `str` opcodes, not py3 unicode or bytes."""
    batches = write_cifar(tmp_path)
    raw = (tmp_path / "test_batch").read_bytes()
    assert pickle.SHORT_BINSTRING + b"\x04data" in raw
    assert pickle.SHORT_BINSTRING + b"\x06labels" in raw
    assert pickle.BINUNICODE + struct.pack("<I", 4) + b"data" not in raw
    with pytest.raises(UnicodeDecodeError):  # what a py3 reader without encoding= would hit
        pickle.loads(raw)
    loaded = pickle.loads(raw, encoding="latin1")
    assert set(loaded) == {"batch_label", "labels", "data", "filenames"}
    assert np.array_equal(loaded["data"], batches[5]["data"])


@pytest.mark.parametrize("dump", [_dump_py2, _dump_py3], ids=["py2-cpickle", "py3-protocol2"])
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "cifar-10-batches-py"])
def test_cifar10_layout_pixels_and_labels(tmp_path: Path, dump, nested: bool) -> None:
    batches = write_cifar(tmp_path / "cifar-10-batches-py" if nested else tmp_path, dump)
    train, test, info = cifar10(tmp_path)

    assert shape(info) == (10, 3, 32) and info.classes[0] == "airplane"
    assert isinstance(train, TensorImages) and isinstance(test, TensorImages)
    assert train.images.shape == (5 * CIFAR_PER_BATCH, 3, 32, 32)
    assert test.images.shape == (CIFAR_PER_BATCH, 3, 32, 32)
    assert train.images.dtype == test.images.dtype == torch.uint8

    # train = data_batch_1..5 concatenated in order; test_batch on its own
    expected_train_labels = sum((b["labels"] for b in batches[:5]), [])
    assert train.targets.tolist() == expected_train_labels
    assert test.targets.tolist() == batches[5]["labels"]
    assert train.images[:, 0, 0, 0].tolist() == [
        k for k in range(5) for _ in range(CIFAR_PER_BATCH)
    ]
    assert test.images[:, 0, 0, 0].tolist() == [5] * CIFAR_PER_BATCH

    # known pixels land at (channel, row, column)
    for c, y, x in [(0, 0, 1), (1, 2, 5), (2, 31, 0), (0, 17, 30), (2, 31, 31)]:
        assert int(test.images[3, c, y, x]) == _chw(batches[5]["data"][3], c, y, x)
        # image 3 of data_batch_2 is train image CIFAR_PER_BATCH + 3
        assert int(train.images[CIFAR_PER_BATCH + 3, c, y, x]) == _chw(
            batches[1]["data"][3], c, y, x
        )
    for i in range(CIFAR_PER_BATCH):
        assert np.array_equal(test.images[i].flatten().numpy(), batches[5]["data"][i])


def test_cifar10_test_samples_are_normalised_and_not_augmented(cifar_root) -> None:
    root, batches = cifar_root
    _, test, _ = cifar10(root)
    x, y = test[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y == batches[5]["labels"][3] and isinstance(y, int)
    row = batches[5]["data"][3]
    for c, yy, xx in [(0, 0, 1), (1, 2, 5), (2, 31, 0)]:
        expected = (_chw(row, c, yy, xx) / 255 - CIFAR_MEAN[c]) / CIFAR_STD[c]
        assert float(x[c, yy, xx]) == pytest.approx(expected, abs=1e-5)
    # the whole image, and the same result every time (no random augmentation on the test set)
    raw = torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32)) / 255
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    torch.testing.assert_close(test[3][0], x, rtol=0, atol=0)


def test_cifar10_train_samples_are_normalised_crops(cifar_root) -> None:
    root, _ = cifar_root
    train, _, _ = cifar10(root)
    torch.manual_seed(0)
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    for i in range(0, len(train), 7):
        x, y = train[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert y == int(train.targets[i])
        # undoing the normalisation gives whole 8-bit values: pixels of image i or zero padding
        pixels = (x * std + mean) * 255
        torch.testing.assert_close(pixels, pixels.round(), rtol=0, atol=1e-3)
        values = set(pixels.round().to(torch.int64).unique().tolist())
        assert values <= set(train.images[i].unique().tolist()) | {0}


def test_cifar10_bytes_keys_are_rejected_with_the_file_named(tmp_path: Path) -> None:
    """A batch re-pickled from a `pickle.load(f, encoding='bytes')` dict has keys b'data',
    b'labels'; that is not the distributed format and the loader says which file is wrong."""
    write_cifar(tmp_path, _dump_py3, keys=lambda k: k.encode())
    with pytest.raises(DatasetError) as e:
        cifar10(tmp_path)
    assert str(tmp_path / "data_batch_1") in str(e.value)
    assert "'data'" in str(e.value)


def test_cifar10_missing_batch_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetError) as e:
        cifar10(tmp_path)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_4") in str(e.value)
    assert "test_batch" in str(e.value)


def test_cifar10_garbage_file_is_a_dataset_error(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(DatasetError, match="test_batch"):
        cifar10(tmp_path)


class _Exploit:
    """Unpickles as a call of os.system: what a crafted data_batch_1 would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["data", "labels", "key"])
def test_cifar10_crafted_pickle_is_refused_not_run(tmp_path: Path, where: str) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    batch = _cifar_batch(0)
    if where == "key":
        batch["extra"] = _Exploit(marker)
    else:
        batch[where] = _Exploit(marker)
    _dump_py3(batch, tmp_path / "data_batch_1")
    with pytest.raises(DatasetError, match=r"data_batch_1 .*refusing (posix|os)\.system"):
        cifar10(tmp_path)
    assert not marker.exists()
    pickle.loads((tmp_path / "data_batch_1").read_bytes())  # the plain unpickler would run it
    assert marker.exists()


# ================================================================ Fashion-MNIST (IDX)

FASHION_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def idx_images(pixels: np.ndarray) -> bytes:
    n, h, w = pixels.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + pixels.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_fashion(root: Path, gz: bool, n_train: int = 30, n_test: int = 10) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    files = {
        "train-images-idx3-ubyte": idx_images(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte": idx_labels(np.arange(n_train)[::-1] % 10),
        "t10k-images-idx3-ubyte": idx_images(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_labels((np.arange(n_test) * 3) % 10),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (root / name).write_bytes(raw)
    return files


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_fashion_mnist_pixels_and_labels(tmp_path: Path, gz: bool) -> None:
    files = write_fashion(tmp_path, gz)
    train, test, info = fashion_mnist(tmp_path)
    assert shape(info) == (10, 1, 28) and info.classes[-1] == "Ankle boot"
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    # labels: byte 8 onwards of the label file
    assert train.targets.tolist() == [(29 - i) % 10 for i in range(30)]
    assert test.targets.tolist() == [(3 * i) % 10 for i in range(10)]
    assert train.targets.dtype == torch.int64
    # pixel (row y, column x) of image i is byte 16 + 784 i + 28 y + x of the image file
    for i, y, x in [(0, 0, 0), (2, 5, 7), (29, 27, 27), (13, 0, 27), (4, 27, 1)]:
        assert (
            int(train.images[i, 0, y, x])
            == files["train-images-idx3-ubyte"][16 + 784 * i + 28 * y + x]
        )
    for i, y, x in [(0, 0, 1), (9, 20, 3)]:
        assert (
            int(test.images[i, 0, y, x])
            == files["t10k-images-idx3-ubyte"][16 + 784 * i + 28 * y + x]
        )
    # test samples: normalised, unaugmented
    sample, label = test[9]
    assert sample.shape == (1, 28, 28) and sample.dtype == torch.float32 and label == 7
    v = files["t10k-images-idx3-ubyte"][16 + 784 * 9 + 28 * 20 + 3]
    assert float(sample[0, 20, 3]) == pytest.approx(
        (v / 255 - FASHION_MEAN[0]) / FASHION_STD[0], abs=1e-5
    )
    x, y = train[5]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 4


def test_read_idx_reads_the_header_dims(tmp_path: Path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 0x803, 2, 3, 4) + bytes(range(24)))
    arr = read_idx(path)
    assert arr.shape == (2, 3, 4) and arr.dtype == np.uint8
    assert arr[1, 2, 3] == 23 and arr[1, 0, 1] == 13


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # 0x0D: float32 data (4 bytes a value)
        (struct.pack(">IIII", 0x00000D03, 1, 28, 7) + bytes(784), "not an unsigned-byte IDX"),
        # little-endian magic
        (struct.pack(">IIII", 0x03080000, 1, 28, 28) + bytes(784), "not an unsigned-byte IDX"),
        # header says 2 images, 1 held
        (
            struct.pack(">IIII", 0x00000803, 2, 28, 28) + bytes(784),
            "header says .* but holds 784 bytes",
        ),
        (b"\x00\x00", "not an unsigned-byte IDX"),  # shorter than a magic number
    ],
    ids=["float-type", "byte-swapped-magic", "size-mismatch", "short"],
)
def test_malformed_idx_is_a_dataset_error(tmp_path: Path, raw: bytes, message: str) -> None:
    write_fashion(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw)
    with pytest.raises(DatasetError, match=message) as e:
        fashion_mnist(tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte") in str(e.value)


def test_idx_size_mismatch_message_shows_plain_dims(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 0x00000803, 2, 28, 28) + bytes(784))
    with pytest.raises(DatasetError, match=r"header says \(2, 28, 28\) but holds 784 bytes"):
        read_idx(path)


def test_truncated_idx_header_is_a_dataset_error(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">II", 0x803, 60000))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        fashion_mnist(tmp_path)


@pytest.mark.parametrize("how", ["truncated-download", "not-gzip"])
def test_broken_gzip_is_a_dataset_error(tmp_path: Path, how: str) -> None:
    write_fashion(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if how == "truncated-download" else b"plain bytes")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        fashion_mnist(tmp_path)


def test_fashion_mnist_image_label_count_mismatch(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(np.arange(9) % 10))
    with pytest.raises(DatasetError, match=r"\(10, 28, 28\).*\(9,\)"):
        fashion_mnist(tmp_path)


def test_fashion_mnist_labels_file_in_place_of_images(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_labels(np.arange(30) % 10))
    with pytest.raises(DatasetError):
        fashion_mnist(tmp_path)


def test_fashion_mnist_missing_files_names_path_and_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        fashion_mnist(tmp_path)
    message = str(e.value)
    assert str(tmp_path / "train-images-idx3-ubyte") in message
    for name in FASHION_FILES:
        assert name in message
    assert "apt-get" not in message  # the package hint is only for the package's folder

    # one file missing among the others: that one is named
    write_fashion(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=str(tmp_path / "t10k-labels-idx1-ubyte")):
        fashion_mnist(tmp_path)


@pytest.mark.skipif(
    not Path(FASHION_MNIST_ROOT).is_dir(),
    reason=f"{FASHION_MNIST_ROOT} is absent (Debian package dataset-fashion-mnist not installed)",
)
def test_real_fashion_mnist_from_default_root() -> None:
    spec = DatasetSpec(name="fashion-mnist", train_size=1000, test_size=500)
    train, test, info = load_datasets(spec)
    assert shape(info) == (10, 1, 28)
    assert len(train.dataset) == 60000 and len(test.dataset) == 10000
    assert len(train) == 1000 and len(test) == 500
    assert torch.bincount(train.targets, minlength=10).tolist() == [100] * 10
    assert torch.bincount(test.targets, minlength=10).tolist() == [50] * 10
    # the published files: 6000 / 1000 per class; the first labels are ankle boots (9)
    assert torch.bincount(train.dataset.targets).tolist() == [6000] * 10
    assert torch.bincount(test.dataset.targets).tolist() == [1000] * 10
    assert train.dataset.targets[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.dataset.targets[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    # subset targets are the underlying labels of the chosen indices; samples are normalised
    assert train.targets.tolist() == train.dataset.targets[train.indices].tolist()
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y == int(test.dataset.targets[test.indices[0]])
    assert float(x.min()) == pytest.approx((0 - FASHION_MEAN[0]) / FASHION_STD[0], abs=1e-5)


# ================================================================ ImageNet (class folders)

IMAGENET_CLASSES = {
    "n01440764": (200, 30, 10),
    "n01443537": (20, 180, 40),
    "n02102040": (60, 90, 240),
}


def write_imagenet(root: Path, classes: dict = IMAGENET_CLASSES, splits=("train", "val")) -> None:
    """Every image of a class is a solid colour of its own, 40x30 pixels, saved as JPEG."""
    for split in splits:
        for name, rgb in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(2 if split == "train" else 1):
                Image.new("RGB", (40, 30), rgb).save(folder / f"{name}_{k}.JPEG", quality=95)


def test_imagenet_class_folders(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    train, test, info = load_datasets(DatasetSpec(name="imagenet", root=str(tmp_path)))
    assert shape(info) == (3, 3, 224) and list(info.classes) == sorted(IMAGENET_CLASSES)
    assert train.classes == test.classes == sorted(IMAGENET_CLASSES)
    assert len(train) == 6 and len(test) == 3
    assert sorted(train.targets) == [0, 0, 1, 1, 2, 2] and sorted(test.targets) == [0, 1, 2]
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    for i in range(len(test)):
        x, y = test[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        # resize + centre crop of a solid colour is that colour; the label is its folder's
        rgb = torch.tensor(IMAGENET_CLASSES[test.classes[y]], dtype=torch.float32)
        expected = ((rgb / 255 - mean) / std).view(3, 1, 1).expand(3, 224, 224)
        torch.testing.assert_close(x, expected, rtol=0, atol=3 / 255 / 0.224)
    for i in range(len(train)):
        x, y = train[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        assert y == train.targets[i]


def test_imagenet_mismatched_class_folders(tmp_path: Path) -> None:
    write_imagenet(tmp_path, splits=("train",))
    write_imagenet(tmp_path, {k: IMAGENET_CLASSES[k] for k in list(IMAGENET_CLASSES)[:2]}, ("val",))
    with pytest.raises(DatasetError, match="different class folders"):
        imagenet(tmp_path)


@pytest.mark.parametrize("empty", [False, True], ids=["val-missing", "val-empty"])
def test_imagenet_missing_val_names_the_folder(tmp_path: Path, empty: bool) -> None:
    write_imagenet(tmp_path, splits=("train",))
    if empty:
        (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError) as e:
        imagenet(tmp_path)
    assert f"ImageNet: {tmp_path / 'val'}:" in str(e.value)


# ================================================================ synthetic


def test_synthetic_is_deterministic_balanced_and_sized() -> None:
    a_train, a_test, info = synthetic(train_size=100, test_size=30, classes=10, size=16)
    b_train, b_test, _ = synthetic(train_size=100, test_size=30, classes=10, size=16)
    assert info == DatasetInfo(10, 3, 16)
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_test.images, b_test.images)
    assert torch.equal(a_train.targets, b_train.targets)
    assert torch.equal(a_test.targets, b_test.targets)
    assert len(a_train) == 100 and len(a_test) == 30
    assert torch.bincount(a_train.targets, minlength=10).tolist() == [10] * 10
    assert torch.bincount(a_test.targets, minlength=10).tolist() == [3] * 10
    assert a_train.targets.tolist() != sorted(a_train.targets.tolist())  # shuffled
    assert not torch.equal(a_train.images[:30], a_test.images)
    other, _, _ = synthetic(train_size=100, test_size=30, seed=1)
    assert not torch.equal(other.images, a_train.images)
    x, y = a_train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == int(a_train.targets[0])


def test_synthetic_classes_share_a_pattern() -> None:
    """Learnable: images of one class are closer to their class mean than to other classes'."""
    train, _, _ = synthetic(train_size=200, test_size=10, classes=4, size=8)
    x = train.images.float()
    means = torch.stack([x[train.targets == c].mean(0) for c in range(4)])
    nearest = torch.cdist(x.flatten(1), means.flatten(1)).argmin(1)
    assert torch.equal(nearest, train.targets)


def test_synthetic_through_load_datasets() -> None:
    train, test, info = load_datasets(DatasetSpec(name="synthetic", train_size=60, test_size=20))
    assert (len(train), len(test), info) == (60, 20, DatasetInfo(10, 3, 16))
    assert torch.bincount(train.targets).tolist() == [6] * 10
    train2, _, _ = load_datasets(DatasetSpec(name="synthetic", train_size=60, test_size=20))
    assert torch.equal(train.images, train2.images)


# ================================================================ balanced subsets (on CIFAR files)


def _cifar_spec(root: Path, train_size: int | None, test_size: int | None = None) -> DatasetSpec:
    return DatasetSpec(name="cifar10", root=str(root), train_size=train_size, test_size=test_size)


def test_balanced_subset_counts(cifar_root) -> None:
    root, batches = cifar_root
    train, test, info = load_datasets(_cifar_spec(root, 30, 10))
    assert shape(info) == (10, 3, 32)
    assert len(train) == 30 and len(test) == 10
    assert torch.bincount(train.targets, minlength=10).tolist() == [3] * 10
    assert torch.bincount(test.targets, minlength=10).tolist() == [1] * 10
    # the subsets index the full sets and carry their labels
    assert len(train.dataset) == 100 and len(test.dataset) == 20
    assert train.targets.tolist() == [int(train.dataset.targets[i]) for i in train.indices]
    assert test.targets.tolist() == [batches[5]["labels"][i] for i in test.indices]
    assert [train[k][1] for k in range(len(train))] == train.targets.tolist()
    # not a multiple of the class count: the first classes get one more
    odd, _, _ = load_datasets(_cifar_spec(root, 35))
    assert torch.bincount(odd.targets, minlength=10).tolist() == [4] * 5 + [3] * 5


def test_balanced_subset_is_seeded_and_fixed(cifar_root) -> None:
    root, _ = cifar_root
    a, a_test, _ = load_datasets(_cifar_spec(root, 30, 10), seed=0)
    b, b_test, _ = load_datasets(_cifar_spec(root, 30, 10), seed=0)
    c, c_test, _ = load_datasets(_cifar_spec(root, 30, 10), seed=1)
    assert a.indices == b.indices and a_test.indices == b_test.indices
    assert a.indices != c.indices and a_test.indices != c_test.indices
    assert torch.bincount(c.targets, minlength=10).tolist() == [3] * 10
    # a fixed set in a fixed order: sorted indices, the same on every pass
    assert a.indices == sorted(a.indices) and len(set(a.indices)) == 30
    first = [a[k][1] for k in range(len(a))]
    second = [a[k][1] for k in range(len(a))]
    assert first == second == a.targets.tolist()


def test_balanced_subset_larger_than_the_set_is_the_set(cifar_root) -> None:
    root, _ = cifar_root
    train, test, _ = load_datasets(_cifar_spec(root, 100, 1000))
    assert isinstance(train, TensorImages) and isinstance(test, TensorImages)
    assert (len(train), len(test)) == (100, 20)


# ================================================================ load_datasets errors


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "fashion-mnist"])
def test_missing_root_folder_is_named(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(DatasetError) as e:
        load_datasets(DatasetSpec(name=name, root=str(missing)))
    assert str(missing) in str(e.value) and name in str(e.value)


@pytest.mark.parametrize("name", ["cifar10", "imagenet"])
def test_root_is_required_without_a_default(name: str) -> None:
    with pytest.raises(DatasetError, match=r"needs a root folder \(dataset.root\)"):
        load_datasets(DatasetSpec(name=name))


def test_root_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_cifar(tmp_path / "cifar")
    train, _, _ = load_datasets(DatasetSpec(name="cifar10", root="~/cifar"))
    assert len(train) == 100
