"""What batch-norm statistics do to a finished quantized run's test accuracy.

For each run folder (a quantized `lsq run` output on full Fashion-MNIST: model-int.pt and
model.pt), the test top-1 with the running averages it saved, then after lsq.loop's
reestimate_batch_norm over 100 shuffled, augmented training batches (what
`training.bn_reestimate: 100` does after every epoch), over 100 un-augmented batches, and over
the whole un-augmented training set. Prints a Markdown table (bench/accuracy.md records it).

    .venv/bin/python bench/bn_stats.py runs/accuracy/default-W+A-* [--seed 5]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from lsq.data import load_datasets
from lsq.evaluation import evaluate
from lsq.export import load_trained
from lsq.loop import loader, reestimate_batch_norm
from lsq.spec import DatasetSpec

# (label, shuffled and augmented, batches); 469 batches of 128 are one pass over 60 000 images
WAYS = [("100 augmented", True, 100), ("100 plain", False, 100), ("all plain", False, 469)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--seed", type=int, default=5, help="the shuffle's and augmentation's")
    args = parser.parse_args()
    device = torch.device("cpu")
    train, test, _ = load_datasets(DatasetSpec(name="fashion-mnist"))
    test_batches = loader(test, 1024, device, False)
    print("| run | saved running averages | " + " | ".join(w[0] for w in WAYS) + " |")
    print("|---|---" + "|---" * len(WAYS) + "|")
    for run in args.runs:
        model, _ = load_trained(run / "model-int.pt", run / "model.pt")
        top1 = [evaluate(model, test_batches, device).top1]
        for _, shuffled, batches in WAYS:
            copied = copy.deepcopy(model)
            data = loader(train, 128, device, shuffled, args.seed)
            reestimate_batch_norm(copied, data, batches, device, None)
            top1.append(evaluate(copied, test_batches, device).top1)
        print(f"| {run.name} | " + " | ".join(f"{t:.2f}" for t in top1) + " |", flush=True)


if __name__ == "__main__":
    main()
