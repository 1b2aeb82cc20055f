"""What quantization costs as users feel it: whole `lsq run` epochs, quantized against float.

Runs ResNet-20 jobs through lsq.train.run (what `lsq run` calls) on CIFAR-shaped synthetic
data (32x32x3, batch 128): full precision, W[-1,0,1]/A[0,1,2,3] with the first and last layer
in float, and the same with them quantized too; each eagerly and with training.compile on.
Jobs run interleaved round by round in this one process, so machine noise hits all alike.
Prints each job's training images/s (epochs after the first, compile time excluded), its
ratio of cost to the full-precision job in the same mode, and the compile seconds apart.

    .venv/bin/python bench/epoch.py [--rounds 2] [--epochs 2] [--train-size 5120]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile

import torch

from lsq.spec import JobSpec
from lsq.train import run

QUANTIZED = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]}
VARIANTS = {
    "full precision": {},
    "W/A, first/last float": {**QUANTIZED, "first_last": "float"},
    "W/A, first/last same": {**QUANTIZED, "first_last": "same"},
}


def job(quantization: dict, compile_mode: str, args: argparse.Namespace) -> JobSpec:
    dataset = {"name": "synthetic", "image_size": 32, "train_size": args.train_size}
    return JobSpec.model_validate(
        {
            "name": "bench",
            "dataset": {**dataset, "test_size": 1024},
            "model": {"arch": "resnet20"},
            "quantization": quantization,
            "training": {"epochs": args.epochs, "batch_size": 128, "compile": compile_mode},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=5120)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rates: dict[tuple[str, str], list[float]] = {}
    compile_seconds: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in ("off", "on"):
                for name, quantization in VARIANTS.items():
                    epochs = []
                    run(
                        job(quantization, mode, args),
                        f"{tmp}/{r}{mode}{name}",
                        on_epoch=epochs.append,
                    )
                    rates.setdefault((mode, name), []).extend(
                        e.images_per_second for e in epochs[1:]
                    )
                    compile_seconds.setdefault((mode, name), []).append(
                        sum(e.compile_seconds or 0 for e in epochs)
                    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-20, 32x32x3, "
        f"batch 128, {args.train_size} images, epochs 2..{args.epochs} of {args.rounds} rounds"
    )
    for mode, label in (("off", "eager"), ("on", "compiled")):
        base = statistics.median(rates[(mode, "full precision")])
        for name in VARIANTS:
            rate = statistics.median(rates[(mode, name)])
            secs = compile_seconds[(mode, name)]
            extra = f"  compile {min(secs):.0f}-{max(secs):.0f} s" if mode == "on" else ""
            print(f"{label:>9}  {name:<22} {rate:7.0f} images/s  cost {base / rate:.2f}x{extra}")


if __name__ == "__main__":
    main()
