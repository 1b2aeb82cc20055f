"""Evaluation speed of the integer export against the fake-quantized model it came from.

ResNet-20, W[-1,0,1]/A[0,1,2,3] (first/last same), CIFAR-shaped batches of 512 in inference
mode, interleaved round by round in this one process. The export's weights are codes * step
with no weight quantizer left to run; its predictions are checked equal first.

    .venv/bin/python bench/export.py [--rounds 5] [--batches 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lsq.convert import quantize_as_specified
from lsq.export import load_integer, save_integer
from lsq.networks import build_model
from lsq.spec import JobSpec

SPEC = JobSpec.model_validate(
    {
        "name": "export-bench",
        "dataset": {"name": "synthetic", "image_size": 32},
        "model": {"arch": "resnet20"},
        "quantization": {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3], "first_last": "same"},
    }
)


@torch.inference_mode()
def rate(model: torch.nn.Module, x: torch.Tensor, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        model(x)
    return batches * len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    fake = quantize_as_specified(build_model("resnet20", 10, 3), SPEC.quantization)
    x = torch.randn(512, 3, 32, 32)
    fake.train()(x)  # the activation steps' first-batch init
    fake.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model-int.pt"
        info = {"num_classes": 10, "in_channels": 3, "image_size": 32}
        save_integer(fake, SPEC, info, path)
        exported, _ = load_integer(path)
    with torch.inference_mode():
        assert torch.equal(fake(x).argmax(1), exported(x).argmax(1))
    rates: dict[str, list[float]] = {"fake-quantized": [], "integer export": []}
    for _ in range(args.rounds):
        rates["fake-quantized"].append(rate(fake, x, args.batches))
        rates["integer export"].append(rate(exported, x, args.batches))
    base = statistics.median(rates["fake-quantized"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 512, 32x32x3")
    for name, r in rates.items():
        m = statistics.median(r)
        print(f"{name:>15}: {m:7.0f} images/s  {m / base:.2f}x")


if __name__ == "__main__":
    main()
