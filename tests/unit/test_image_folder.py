"""Image-folder datasets (lsq.image_folder): real PNG and JPEG files in class folders."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from lsq.data import DatasetError, load_datasets
from lsq.image_folder import DecodedFiles
from lsq.metrics import ClassReport, DataSummary, RunResult, classes_line
from lsq.spec import DatasetSpec, JobSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(root: Path, **fields: object) -> DatasetSpec:
    return DatasetSpec(name="image_folder", root=str(root), **fields)


def write(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def bomb_png(path: Path, side: int = 20_000) -> None:
    """A PNG whose header claims side x side pixels (400 Mpx), with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.fixture
def two_tone(tmp_path: Path) -> Path:
    """class `dark`: grey 51 (0.2), as PNG; class `light`: 153 (0.6), as RGB JPEGs, RGBA and
    palette PNGs; 10 each, in train/ and val/. Every mode converts to the same grey."""
    root = tmp_path / "tones"
    for split, n in (("train", 10), ("val", 4)):
        for i in range(n):
            write(root / split / "dark" / f"{i}.png", Image.new("L", (40, 30), 51))
            light = root / split / "light"
            kinds = [
                ("jpg", Image.new("RGB", (30, 40), (153, 153, 153))),
                ("png", Image.new("RGBA", (30, 30), (153, 153, 153, 255))),
                ("png", Image.new("RGB", (30, 30), (153, 153, 153)).convert("P")),
            ]
            suffix, image = kinds[i % 3]
            write(light / "nested" / f"{i}.{suffix}", image)
    return root


def test_train_and_val_folders_with_every_image_mode(two_tone: Path) -> None:
    train, test, info = load_datasets(spec(two_tone, image_size=16, channels=1))
    assert info.classes == ("dark", "light") and (info.in_channels, info.image_size) == (1, 16)
    assert (len(train), len(test)) == (20, 8) and info.skipped == 0
    assert train.images.shape == (20, 1, 16, 16)
    by_class = {int(c): set(train.images[train.targets == c].flatten().tolist()) for c in (0, 1)}
    assert by_class[0] == {51}
    assert by_class[1] <= {152, 153, 154}  # JPEG's rounding
    # measured on the training images: half at 0.2, half at ~0.6
    assert info.mean[0] == pytest.approx(0.4, abs=0.003)
    assert info.std[0] == pytest.approx(0.2, abs=0.003)
    rgb = load_datasets(spec(two_tone, image_size=8))[0]
    assert rgb.images.shape == (20, 3, 8, 8)


def test_one_folder_is_split_by_a_seeded_fraction_per_class(tmp_path: Path) -> None:
    for c in ("a", "b", "c"):
        for i in range(10):
            write(tmp_path / "set" / c / f"{i}.png", Image.new("RGB", (8, 8), (i * 20, 0, 0)))
    first = load_datasets(spec(tmp_path / "set", val_fraction=0.3), seed=1)
    again = load_datasets(spec(tmp_path / "set", val_fraction=0.3), seed=1)
    other = load_datasets(spec(tmp_path / "set", val_fraction=0.3), seed=2)
    train, test, _ = first
    assert (len(train), len(test)) == (21, 9)
    assert torch.bincount(test.targets).tolist() == [3, 3, 3]
    assert torch.equal(test.images, again[1].images)
    assert not torch.equal(test.images, other[1].images)
    subset = load_datasets(spec(tmp_path / "set", train_size=6, test_size=3), seed=0)
    assert torch.bincount(subset[0].targets).tolist() == [2, 2, 2] and len(subset[1]) == 3


def test_unreadable_files_are_skipped_and_counted_or_fail_the_job(
    two_tone: Path, tmp_path: Path
) -> None:
    dark = two_tone / "train" / "dark"
    (dark / "cut.png").write_bytes((dark / "0.png").read_bytes()[:60])  # truncated
    (dark / "text.jpg").write_text("not an image")  # wrong magic
    bomb_png(dark / "bomb.png")  # 400 Mpx claimed
    outside = write(tmp_path / "elsewhere" / "x.png", Image.new("L", (8, 8), 0))
    (dark / "link.png").symlink_to(outside)  # a link out of the root is never read
    (two_tone / "train" / "etc").symlink_to("/etc")  # nor a class folder that is a link
    (two_tone / "val" / "etc").symlink_to("/etc")
    (dark / "notes.txt").write_text("not an image suffix: not a candidate")
    train, _, info = load_datasets(spec(two_tone, image_size=8, channels=1))
    assert info.skipped == 3 and len(train) == 20 and info.classes == ("dark", "light")
    with pytest.raises(DatasetError, match="unreadable image .*bomb.png: .*decompression bomb"):
        load_datasets(spec(two_tone, image_size=8, channels=1, unreadable="fail"))


def test_a_set_over_the_memory_budget_is_decoded_per_image(
    two_tone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held, held_test, info = load_datasets(spec(two_tone, image_size=8, channels=1))
    monkeypatch.setenv("LSQ_DATA_MEMORY_BYTES", "100")
    dark = two_tone / "train" / "dark"
    (dark / "z-cut.png").write_bytes((dark / "0.png").read_bytes()[:60])  # skipped at load
    files, files_test, files_info = load_datasets(spec(two_tone, image_size=8, channels=1))
    assert isinstance(files, DecodedFiles) and len(files) == 20 and files_info.skipped == 1
    assert dataclasses.replace(files_info, skipped=0) == info  # the same statistics
    for i in range(len(files)):  # every file it kept decodes: nothing fails mid-epoch
        x, y = files[i]
    x, y = files[3]
    assert torch.equal(x, held.batch(held.images[3:4])[0]) and y == int(held.targets[3])


def test_bad_layouts_are_readable_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no class folders"):
        load_datasets(spec(tmp_path / "empty"))
    write(tmp_path / "odd" / "train" / "a" / "0.png", Image.new("L", (8, 8)))
    write(tmp_path / "odd" / "val" / "b" / "0.png", Image.new("L", (8, 8)))
    with pytest.raises(DatasetError, match="different class folders"):
        load_datasets(spec(tmp_path / "odd"))
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="class folder 'a' in .* holds no images"):
        load_datasets(spec(tmp_path / "hollow"))
    write(tmp_path / "half" / "train" / "a" / "0.png", Image.new("L", (8, 8)))
    with pytest.raises(DatasetError, match="has train/ without val/"):
        load_datasets(spec(tmp_path / "half"))
    write(tmp_path / "one" / "a" / "0.png", Image.new("L", (8, 8)))
    with pytest.raises(DatasetError, match="class 'a' has 1 image.*too few"):
        load_datasets(spec(tmp_path / "one"))
    odd = write(tmp_path / "odd-name" / "caf\udcff" / "0.png", Image.new("L", (8, 8)))
    assert odd.is_file()
    with pytest.raises(DatasetError, match="printable UTF-8"):
        load_datasets(spec(tmp_path / "odd-name"))
    with pytest.raises(DatasetError, match="File name too long"):
        load_datasets(spec(tmp_path / ("a" * 4000)))


def test_the_spec_bounds_image_folder_fields() -> None:
    base = {"name": "t", "model": {"arch": "resnet20"}}
    bad = [
        ({"name": "image_folder"}, "needs root"),
        ({"name": "cifar10", "root": "/x", "channels": 1}, "channels apply to the image_folder"),
        ({"name": "image_folder", "root": "/x", "channels": 1, "mean": [0.5]}, "std together"),
        ({"name": "image_folder", "root": "/x", "mean": [0.5], "std": [0.2]}, "1 values for 3"),
        ({"name": "image_folder", "root": "/x", "image_size": 4096}, "image_size"),
    ]
    for dataset, message in bad:
        with pytest.raises(ValidationError, match=message):
            JobSpec.model_validate(base | {"dataset": dataset})


def test_a_job_trains_on_an_image_folder_and_reports_each_class(tmp_path: Path) -> None:
    """Two learnable classes (a bright square left or right): above chance in one epoch, with
    class names, per-class accuracy and the normalisation in the result."""
    from lsq.train import run

    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("val", 20)):
        for side in ("left", "right"):
            for i in range(n):
                pixels = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
                pixels[4:12, (0 if side == "left" else 8) : (8 if side == "left" else 16)] = 220
                write(tmp_path / "sq" / split / side / f"{i}.png", Image.fromarray(pixels))
    job = JobSpec.model_validate({
        "name": "folder", "model": {"arch": "resnet20"},
        "dataset": {"name": "image_folder", "root": str(tmp_path / "sq"), "image_size": 16},
        "quantization": {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]},
        "training": {"epochs": 1, "batch_size": 16, "lr": 0.05},
    })  # fmt: skip
    result = run(job, tmp_path / "run")
    assert result.final_top1 > 75
    assert result.per_class is not None and result.per_class.classes == ["left", "right"]
    assert all(top1 is not None and top1 > 50 for top1 in result.per_class.top1)
    assert result.data is not None and len(result.data.mean) == 3


def test_the_class_report_from_a_confusion_matrix_by_hand() -> None:
    """Rows true, columns predicted: cat 8/10 right (2 taken for dog), dog 5/5, bird none."""
    report = ClassReport.of([[8, 2, 0], [0, 5, 0], [0, 0, 0]], ["cat", "dog", "bird"])
    assert report.top1 == [80.0, 100.0, None]
    assert [(m.true, m.predicted, m.count, m.share) for m in report.confusions] == [
        ("cat", "dog", 2, 20.0)
    ]
    result = RunResult(
        final_top1=86.67, final_top5=100, best_top1=86.67, best_top5=100, best_epoch=1,
        epochs=1, per_class=report, data=DataSummary(mean=[0.5], std=[0.2], skipped_images=3),
    )  # fmt: skip
    assert classes_line(result) == (
        "worst classes: cat 80.00%, dog 100.00%; commonest mistake: cat taken for dog "
        "(20.00% of cat); 3 image files did not decode and were skipped"
    )
