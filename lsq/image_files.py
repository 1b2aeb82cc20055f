"""What an image folder is made of (torch-free: the API lists the folders with it)."""

from __future__ import annotations

# Suffixes of the files read as images (as torchvision's ImageFolder, less the rare ones).
EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
MAX_CLASSES = 10_000  # class folders of one image folder
DEFAULT_MEMORY_BYTES = 4 << 30  # LSQ_DATA_MEMORY_BYTES: decoded images held in memory up to this


def readable_name(name: str) -> bool:
    """A name that prints and serialises as itself: UTF-8, no control characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a byte that is not UTF-8, kept by Python as a surrogate
        return False
    return name.isprintable()
