"""What quantization costs as users feel it: whole `lsq run` epochs, quantized against float.

Runs ResNet-20 jobs through lsq.train.run (what `lsq run` calls) on CIFAR-shaped synthetic
data (32x32x3, batch 128): full precision, W[-1,0,1]/A[0,1,2,3] with the first and last layer
in float, and the same with them quantized too.

- `modes`: each job eagerly and with training.compile on, interleaved round by round in this
  one process, so machine noise hits all alike. Prints each job's training images/s (epochs
  after the first, compile time excluded), its cost against the full-precision job in the same
  mode, and the compile seconds apart.
- `auto`: what a user of the default `training.compile: auto` pays, compile included, each job
  in a fresh process sharing one fresh compile cache (lsq.compile_cache): cold (nothing
  compiled yet), then after one job of each graph compiled (`on`, 1 epoch) has warmed it.
  Prints each job's training seconds with its compile, whether it compiled, and its cost
  against the full-precision job in the same state.

    .venv/bin/python bench/epoch.py [--part modes|auto|all] [--rounds 2] [--epochs 2]
        [--train-size 5120]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lsq.spec import JobSpec
from lsq.train import run

QUANTIZED = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]}
VARIANTS = {
    "full precision": {},
    "W/A, first/last float": {**QUANTIZED, "first_last": "float"},
    "W/A, first/last same": {**QUANTIZED, "first_last": "same"},
}


def job(quantization: dict, compile_mode: str, epochs: int, train_size: int) -> JobSpec:
    dataset = {"name": "synthetic", "image_size": 32, "train_size": train_size}
    return JobSpec.model_validate(
        {
            "name": "bench",
            "dataset": {**dataset, "test_size": 1024},
            "model": {"arch": "resnet20"},
            "quantization": quantization,
            "training": {"epochs": epochs, "batch_size": 128, "compile": compile_mode},
        }
    )


def modes(args: argparse.Namespace) -> None:
    rates: dict[tuple[str, str], list[float]] = {}
    compile_seconds: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in ("off", "on"):
                for name, quantization in VARIANTS.items():
                    epochs = []
                    spec = job(quantization, mode, args.epochs, args.train_size)
                    run(spec, f"{tmp}/{r}{mode}{name}", on_epoch=epochs.append)
                    rates.setdefault((mode, name), []).extend(
                        e.images_per_second for e in epochs[1:]
                    )
                    compile_seconds.setdefault((mode, name), []).append(
                        sum(e.compile_seconds or 0 for e in epochs)
                    )
    for mode, label in (("off", "eager"), ("on", "compiled")):
        base = statistics.median(rates[(mode, "full precision")])
        for name in VARIANTS:
            rate = statistics.median(rates[(mode, name)])
            secs = compile_seconds[(mode, name)]
            extra = f"  compile {min(secs):.0f}-{max(secs):.0f} s" if mode == "on" else ""
            print(f"{label:>9}  {name:<22} {rate:7.0f} images/s  cost {base / rate:.2f}x{extra}")


def one_job(args: argparse.Namespace) -> None:
    """The child of `auto`: one job; prints its training seconds, compile included."""
    spec = job(VARIANTS[args.one_job], args.mode, args.epochs, args.train_size)
    epochs = []
    with tempfile.TemporaryDirectory() as tmp:
        run(spec, tmp, on_epoch=epochs.append)
    compile_s = sum(e.compile_seconds or 0 for e in epochs)
    train_s = sum(args.train_size / e.images_per_second for e in epochs) + compile_s
    print(json.dumps({"train_seconds": train_s, "compile_seconds": compile_s}))


def in_fresh_process(name: str, mode: str, epochs: int, cache: Path, args) -> dict:
    command = [sys.executable, __file__, "--one-job", name, "--mode", mode]
    command += ["--epochs", str(epochs), "--train-size", str(args.train_size)]
    env = {**os.environ, "LSQ_COMPILE_CACHE_DIR": str(cache)}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def auto(args: argparse.Namespace) -> None:
    names = ["full precision", "W/A, first/last float"]
    seconds: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as cache:
        for name in names:  # cold: nothing compiled, nothing remembered
            seconds[("cold", name)] = [in_fresh_process(name, "auto", args.epochs, cache, args)]
        for name in names:  # one job of each graph compiles it
            warmed = in_fresh_process(name, "on", 1, Path(cache), args)
            print(f"warming: {name}, compile on, cold compile {warmed['compile_seconds']:.0f} s")
        for _ in range(args.rounds):
            for name in names:
                ran = in_fresh_process(name, "auto", args.epochs, Path(cache), args)
                seconds.setdefault(("warm", name), []).append(ran)
    for state in ("cold", "warm"):
        base = statistics.median(r["train_seconds"] for r in seconds[(state, names[0])])
        for name in names:
            runs = seconds[(state, name)]
            train = statistics.median(r["train_seconds"] for r in runs)
            compile_s = statistics.median(r["compile_seconds"] for r in runs)
            how = f"compiled, compile {compile_s:.1f} s" if compile_s else "eager"
            print(f"{state:>5} auto  {name:<22} {train:6.1f} s ({how})  cost {train / base:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["modes", "auto", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=5120)
    parser.add_argument("--one-job", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one_job:
        return one_job(args)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-20, 32x32x3, "
        f"batch 128, {args.train_size} images, {args.epochs} epochs, {args.rounds} rounds"
    )
    if args.part in ("modes", "all"):
        modes(args)
    if args.part in ("auto", "all"):
        auto(args)


if __name__ == "__main__":
    main()
