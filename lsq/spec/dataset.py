"""The job spec's `dataset`: which images a job trains and tests on, and how they are read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_serializer, model_validator

from .fields import MAX_SUBSET, MAX_SYNTHETIC_BYTES, DatasetName, Path_, Strict

# Where a dataset is read from when `dataset.root` is not given (Debian's package).
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
DEFAULT_ROOTS = {"fashion-mnist": FASHION_MNIST_ROOT}


# The fields of an image folder's spec only (left out of other datasets' stored specs).
IMAGE_FOLDER = ("channels", "val_fraction", "mean", "std", "augment", "unreadable")


class DatasetSpec(Strict):
    name: DatasetName
    root: Path_ | None = Field(None, description="Folder of the dataset files; default per dataset")
    train_size: int | None = Field(
        None, ge=1, le=MAX_SUBSET, description="Seeded class-balanced training subset"
    )
    test_size: int | None = Field(
        None, ge=1, le=MAX_SUBSET, description="Seeded class-balanced test subset"
    )
    image_size: int | None = Field(
        None,
        ge=8,
        le=256,
        description="synthetic and image_folder: the images' side (default 16 and 32); an "
        "image folder's images are scaled and centre-cropped to it",
    )
    channels: Literal[1, 3] | None = Field(
        None, description="image_folder: 1 (grey) or 3 (RGB, the default); images are converted"
    )
    val_fraction: float | None = Field(
        None,
        ge=0.01,
        le=0.9,
        description="image_folder without train/ and val/: the seeded share of each class's "
        "images held out for testing (default 0.2)",
    )
    mean: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None,
        min_length=1,
        max_length=3,
        description="image_folder: per-channel mean of the [0, 1] pixels; default: measured "
        "on the training images",
    )
    std: list[Annotated[float, Field(ge=1e-3, le=1)]] | None = Field(
        None, min_length=1, max_length=3, description="image_folder: per-channel std, as mean"
    )
    augment: bool | None = Field(
        None, description="image_folder: random flips and padded crops in training (default off)"
    )
    unreadable: Literal["skip", "fail"] | None = Field(
        None,
        description="image_folder: a file that does not decode as an image is skipped and "
        "counted (skip, the default) or fails the job (fail)",
    )

    @model_serializer(mode="wrap")
    def _image_folder_fields_when_set(self, handler: Any) -> dict[str, Any]:
        # Other datasets' specs (and those stored before these fields) read as they always did.
        return {k: v for k, v in handler(self).items() if k not in IMAGE_FOLDER or v is not None}

    @model_validator(mode="after")
    def _fields_fit_the_dataset(self) -> Self:
        if self.name != "image_folder":
            given = sorted(f for f in IMAGE_FOLDER if getattr(self, f) is not None)
            if given:
                raise ValueError(f"{', '.join(given)} apply to the image_folder dataset only")
        else:
            if self.root is None:
                raise ValueError("image_folder needs root: the folder of class folders")
            channels = self.channels or 3
            for side in ("mean", "std"):
                value = getattr(self, side)
                if value is not None and len(value) != channels:
                    raise ValueError(f"{side} has {len(value)} values for {channels} channels")
            if (self.mean is None) != (self.std is None):
                raise ValueError("give mean and std together, or neither (both measured)")
        if self.name not in ("synthetic", "image_folder"):
            if self.image_size is not None:
                raise ValueError("image_size applies to the synthetic and image_folder datasets")
            return self
        if self.name == "synthetic":
            size = (
                (self.image_size or 16) ** 2
                * 3
                * ((self.train_size or 2048) + (self.test_size or 512))
            )
            if size > MAX_SYNTHETIC_BYTES:
                raise ValueError(
                    f"a synthetic set of train_size + test_size images of image_size^2 x 3 "
                    f"bytes holds {size} bytes, more than {MAX_SYNTHETIC_BYTES}"
                )
        return self

    def folder(self) -> Path | None:
        """The folder the dataset is read from; None where it needs one and has none."""
        root = self.root or DEFAULT_ROOTS.get(self.name)
        if not root:
            return None
        try:
            return Path(root).expanduser()
        except RuntimeError:  # ~user of no such user: the path as given, which does not exist
            return Path(root)
