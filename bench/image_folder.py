"""A user's own images, end to end: Fashion-MNIST's 10k/2k quick-recipe subset written as PNG
files in class folders, then the quick recipe (3 epochs of full precision, then 2 of LSQ at
W[-1,0,1]/A[0,1,2,3], first and last layers float) on resnet20 through `dataset.name:
image_folder`, beside the same recipe on the built-in reader (bench/zoo.md's resnet20 rows).
The same pixels either way; the folder's order, and its mean and std (measured on its training
images), are its own. Every run folder stays under --out; a finished one is read, not rerun.

    .venv/bin/python bench/image_folder.py [--out runs/image-folder]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from zoo import DATA, FP, LSQ, VARIANTS, job, top1  # noqa: E402

from lsq.data import load_datasets  # noqa: E402
from lsq.spec import DatasetSpec  # noqa: E402


def write_pngs(root: Path) -> None:
    """The built-in reader's subsets, as root/train/<class>/N.png and root/val/<class>/N.png."""
    if (root / "val").is_dir():
        return
    spec = DatasetSpec.model_validate(DATA)
    train, test, info = load_datasets(spec, seed=0)
    for split, subset in (("train", train), ("val", test)):
        images, labels = subset.dataset.images, subset.dataset.targets
        for i in tqdm(subset.indices, desc=f"writing {split}/ as PNG"):
            folder = root / split / info.classes[int(labels[i])].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i, 0].numpy()).save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/image-folder"))
    args = parser.parse_args()
    root = args.out / "fashion-mnist-png"
    write_pngs(root)
    data = {"name": "image_folder", "root": str(root.resolve()), "image_size": 28, "channels": 1}
    fp_out = args.out / "fp"
    fp = top1(job("folder-fp", "resnet20", FP, data=data), fp_out)
    label = "W[-1,0,1]/A[0,1,2,3]"
    spec = job("folder-w3a2", "resnet20", LSQ, str(fp_out / "model.pt"), VARIANTS[label], data)
    quantized = top1(spec, args.out / "w3a2")
    print("| data | levels | test top-1 (%) | drop (points) |\n|---|---|---:|---:|")
    print(f"| image folder (PNG) | full precision | {fp:.2f} | |")
    print(f"| image folder (PNG) | {label} | {quantized:.2f} | {fp - quantized:.2f} |")


if __name__ == "__main__":
    main()
