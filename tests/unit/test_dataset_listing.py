"""GET /v1/datasets' walk (api.service.datasets): what it finds under the data roots."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from api.service import datasets
from api.service.config import Settings


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4)).save(path)


def test_the_walk_finds_each_kind_and_skips_what_json_cannot_carry(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cifar").mkdir(parents=True)
    for name in ("data_batch_1", "test_batch"):
        (root / "cifar" / name).write_bytes(b"")
    (root / "fm").mkdir()
    (root / "fm" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    for c in ("a", "b", "c"):
        image(root / "split" / c / "0.png")
        image(root / "nested" / "halves" / "train" / c / "0.png")
    image(root / "nested" / "halves" / "val" / "a" / "0.png")
    os.makedirs(bytes(root / "bad") + b"\xfename/cls")  # a name that is not UTF-8
    open(bytes(root / "bad") + b"\xfename/cls/0.png", "wb").close()
    found = {(d.name, d.root): d for d in datasets._walk([root])}
    assert found[("cifar10", str(root / "cifar"))].classes == 10
    assert ("fashion-mnist", str(root / "fm")) in found
    assert found[("image_folder", str(root / "split"))].classes == 3
    halves = found[("image_folder", str(root / "nested" / "halves"))]
    assert (halves.classes, halves.layout) == (3, "train/ and val/")
    assert ("synthetic", None) in found
    assert len(found) == 5  # not the folder whose name no JSON response could carry


def test_a_listing_is_walked_once_a_minute(tmp_path: Path) -> None:
    image(tmp_path / "x" / "a" / "0.png")
    settings = Settings(LSQ_DATA_ROOTS=str(tmp_path))
    first = datasets.listing(settings)
    image(tmp_path / "y" / "a" / "0.png")
    assert datasets.listing(settings) is first  # cached: a flood costs one walk
