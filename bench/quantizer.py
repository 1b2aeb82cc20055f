"""Training-step time of ResNet-20 (batch 128, 32x32x3), W[-1,0,1]/A[0,1,2,3] against float.

Prints, for our fused LSQ quantizer and for the plain autograd composition public LSQ code
uses (divide, clamp, round with a straight-through detach, multiply, gradient scale by the
detach trick), the ratio of its step time to the full-precision step time, all measured in
this one process, interleaved round by round so that machine noise hits every variant alike.

    .venv/bin/python bench/quantizer.py [--rounds 5] [--steps 5] [--batch 128]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import lsq
from lsq.networks import build_model
from lsq.quantizer import LsqQuantizer


def plain_forward(self: LsqQuantizer, v: torch.Tensor) -> torch.Tensor:
    """LSQ as public implementations write it (e.g. lsq-net), for comparison."""
    if self.needs_init and self.training:
        self.init_from(v)
    n = v[0].numel() if self.activation else v.numel()
    g = 1.0 / math.sqrt(n * self.q_p)
    s = self.step.reshape(())
    s = (s - s * g).detach() + s * g
    x = torch.clamp(v / s, -self.q_n, self.q_p)
    x = (x.round() - x).detach() + x
    return x * s


class Plain(LsqQuantizer):
    forward = plain_forward


def make(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3)
    if variant != "float":
        model = lsq.quantize_model(model, [-1, 0, 1], [0, 1, 2, 3], first_last="same")
        if variant == "plain":
            for m in model.modules():
                if isinstance(m, LsqQuantizer):
                    m.__class__ = Plain
    return model.train()


def step_seconds(model, opt, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    variants = {name: make(name) for name in ("float", "lsq", "plain")}
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for n, m in variants.items()}
    for name, model in variants.items():  # warm-up, and the activation steps' first-batch init
        step_seconds(model, opts[name], x, y, 2)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, model in variants.items():
            times[name].append(step_seconds(model, opts[name], x, y, args.steps))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name in variants:
        print(
            f"{name:>6}: {1000 * median[name]:8.1f} ms/step  "
            f"{median[name] / median['float']:.2f}x full precision"
        )
    print(f"ours / plain composition: {median['lsq'] / median['plain']:.2f}")


if __name__ == "__main__":
    main()
