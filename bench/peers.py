"""How our LSQ compares with the QAT tools people would use instead, on one recipe.

Every method gets the same conditions: ResNet-20 from one full-precision start (Fashion-MNIST
quick recipe: 10k/2k images, 3 float epochs at lr 0.1), the same batches in the same order
(lsq's seeded loader), the same optimizer (SGD, momentum 0.9, lr 0.01, weight decay 2.5e-5 on
everything but the quantizers' scales), the same cosine schedule over 2 epochs, for the
variants W[-1,0,1] and W[-1,0,1]/A[0,1,2,3], first and last layer float, seeds 0 and 1. The
loop here is the same for all (ours included), so only the quantizer differs.

- `accuracy`: test top-1 as trained, and after batch-norm statistics are re-estimated the same
  way for all (100 training batches, every module but batch norm in eval mode).
- `speed`: training images/s of the W/A variant, eager and compiled where the method compiles,
  interleaved round by round in this process; compile seconds apart (the cache cold).
- `gradients`: each method's step gradient on a hand-made input against the paper's.

    .venv/bin/pip install -r bench/requirements-peers.txt   # the peers, once
    .venv/bin/python bench/peers.py [--parts accuracy speed gradients] [--seeds 0 1]
        [--methods ours torch brevitas nncf torchao] [--out runs/peers]

Prints Markdown tables (docs/compares.md records them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import peer_quantizers as peers
import torch
import torch.nn.functional as F
from torch import nn

from lsq.data import load_datasets
from lsq.evaluation import evaluate
from lsq.loop import eval_batch_size, loader
from lsq.spec import JobSpec
from lsq.train import build, run

METHODS = {
    "ours": "lsq (ours)",
    "torch": "PyTorch _LearnableFakeQuantize",
    "brevitas": "Brevitas",
    "nncf": "NNCF (2-bit by editing its 8-bit quantizers)",
    "torchao": "torchao (nearest: W int2 {-2,-1,0,1})",
}
VARIANTS = {"W[-1,0,1]": True, "W[-1,0,1]/A[0,1,2,3]": False}  # name: weight only
DATASET = {"name": "fashion-mnist", "train_size": 10_000, "test_size": 2_000}
LSQ = {"epochs": 2, "batch_size": 128, "lr": 0.01, "momentum": 0.9, "weight_decay": 2.5e-5}
BN_BATCHES = 100
CPU = torch.device("cpu")


def spec(name: str, training: dict, init: str | None = None) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": name,
            "dataset": DATASET,
            "model": {"arch": "resnet20", "init": init},
            "training": training,
        }
    )


def float_start(out: Path) -> str:
    """The full-precision start every method shares (trained once, then reused)."""
    fp = {"epochs": 3, "batch_size": 128, "lr": 0.1, "weight_decay": 1e-4, "seed": 0}
    result = run(spec("fp", fp), out / "fp", resume=True)
    print(f"full precision, 3 epochs: {result.final_top1:.2f}%", flush=True)
    return str(out / "fp" / "model.pt")


def convert(method: str, model: nn.Module, weight_only: bool, first: torch.Tensor) -> nn.Module:
    """`model` quantized by `method`; `first` is the first training batch (what the methods
    that initialise from data see: ours, NNCF's calibration, torchao's)."""
    if method == "ours":
        return peers.convert_ours(model, weight_only, first)
    if method == "torch":
        return peers.convert_torch(model, weight_only)
    if method == "brevitas":
        return peers.convert_brevitas(model, weight_only)
    if method == "nncf":
        return peers.convert_nncf(model, weight_only, [first])
    return peers.convert_torchao(model, weight_only, first)


def epoch_batches(train_set, seed: int, epoch: int):
    mixed = (seed * 100_003 + epoch) * 1_009  # as lsq.loop seeds an epoch's shuffle
    torch.manual_seed(mixed)
    return loader(train_set, LSQ["batch_size"], CPU, True, mixed)


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """One group with weight decay, one without: the quantizers' scales (one number each)."""
    params = [p for p in model.parameters() if p.requires_grad]
    scales = [p for p in params if p.numel() == 1]
    others = [p for p in params if p.numel() != 1]
    groups = [{"params": others}, {"params": scales, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, LSQ["lr"], LSQ["momentum"], weight_decay=LSQ["weight_decay"])


def quantized(method: str, weight_only: bool, seed: int, fp: str, data) -> nn.Module:
    train_set, _, info = data
    torch.manual_seed(seed)
    model = build(spec("q", {**LSQ, "seed": seed}, fp), info, CPU, fp)
    first, _ = next(iter(epoch_batches(train_set, seed, 1)))
    return convert(method, model, weight_only, first)


def train(model: nn.Module, seed: int, train_set) -> float:
    """The 2 LSQ epochs; training images/s of the last."""
    opt = optimizer(model)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, LSQ["epochs"])
    rate = 0.0
    for epoch in range(1, LSQ["epochs"] + 1):
        model.train()
        start, seen = time.perf_counter(), 0
        for x, y in epoch_batches(train_set, seed, epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        rate = seen / (time.perf_counter() - start)
        schedule.step()
    return rate


@torch.no_grad()
def reestimate_batch_norm(model: nn.Module, train_set, seed: int) -> None:
    """Running statistics as the plain average over BN_BATCHES batches; every other module in
    eval mode, so no quantizer moves its scale (Brevitas' would while collecting statistics)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    batches = epoch_batches(train_set, seed, 99)
    for (x, _), _ in zip(batches, range(BN_BATCHES), strict=False):
        model(x)
    model.eval()


def accuracy(args: argparse.Namespace, fp: str) -> None:
    rows = []
    for variant, weight_only in VARIANTS.items():
        for method in args.methods:
            found = {"trained": [], "bn": [], "rate": []}
            for seed in args.seeds:
                # one 10k/2k subset for every seed (the float start's): only training varies
                data = load_datasets(spec("q", LSQ).dataset, 0)
                train_set, test_set, _ = data
                test = loader(test_set, eval_batch_size(LSQ["batch_size"]), CPU, False)
                model = quantized(method, weight_only, seed, fp, data)
                found["rate"].append(train(model, seed, train_set))
                found["trained"].append(evaluate(model, test, CPU).top1)
                reestimate_batch_norm(model, train_set, seed)
                found["bn"].append(evaluate(model, test, CPU).top1)
                print(f"  {variant} {method} seed {seed}: {found['trained'][-1]:.2f} "
                      f"/ BN {found['bn'][-1]:.2f}", flush=True)  # fmt: skip
            rows.append((variant, method, found))
    print("\n| variant | method | top-1 as trained (seeds) | mean | BN re-estimated (seeds) "
          "| mean | eager images/s |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for variant, method, f in rows:
        seeds = " / ".join(f"{v:.2f}" for v in f["trained"])
        bn = " / ".join(f"{v:.2f}" for v in f["bn"])
        trained, reestimated = statistics.mean(f["trained"]), statistics.mean(f["bn"])
        rate = statistics.median(f["rate"])
        print(f"| {variant} | {METHODS[method]} | {seeds} | {trained:.2f} | {bn} "
              f"| {reestimated:.2f} | {rate:.0f} |")  # fmt: skip


def timed_steps(model: nn.Module, batches: list, opt: torch.optim.Optimizer) -> float:
    """Images/s over `batches` of training steps (after one untimed step)."""
    model.train()
    for i, (x, y) in enumerate(batches):
        if i == 1:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sum(len(y) for _, y in batches[1:]) / (time.perf_counter() - start)


def speed(args: argparse.Namespace, fp: str) -> None:
    """Each method alone in torch.compile's memory (Dynamo reset between methods: five models of
    one class would share its code cache and hit its recompile limit), its eager and compiled
    steps interleaved round by round."""
    data = load_datasets(spec("q", LSQ).dataset, 0)
    batches = list(epoch_batches(data[0], 0, 1))[: args.steps + 1]
    rates: dict[tuple[str, str], list[float]] = {}
    compile_s = {}
    for method in args.methods:
        torch._dynamo.reset()
        model = quantized(method, False, 0, fp, data)
        start = time.perf_counter()
        try:
            compiled = torch.compile(model, dynamic=False)  # as ours
            timed_steps(compiled, batches[:2], optimizer(model))
            compile_s[method] = time.perf_counter() - start
        except Exception as e:  # noqa: BLE001 - a peer that does not compile: say so
            print(f"  {method}: torch.compile failed: {str(e).splitlines()[0][:200]}")
            compiled = None
        for _ in range(args.rounds):
            for mode, module in (("eager", model), ("compiled", compiled)):
                if module is not None:
                    rate = timed_steps(module, batches, optimizer(model))
                    rates.setdefault((method, mode), []).append(rate)
    base = statistics.median(rates[("ours", "eager")]) if "ours" in args.methods else None
    print(f"\nW/A training, ResNet-20, batch 128, {torch.get_num_threads()} threads, "
          f"{args.steps} steps x {args.rounds} rounds\n\n| method | eager images/s | compiled "
          "images/s | compile s (cache cold) |\n|---|---|---|---|")  # fmt: skip
    for method in args.methods:
        eager = statistics.median(rates[(method, "eager")])
        fast = rates.get((method, "compiled"))
        comp = f"{statistics.median(fast):.0f}" if fast else "does not compile"
        secs = f"{compile_s[method]:.0f}" if method in compile_s else ""
        ratio = f" ({eager / base:.2f}x ours)" if base else ""
        print(f"| {METHODS[method]} | {eager:.0f}{ratio} | {comp} | {secs} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["gradients", "accuracy", "speed"])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("runs/peers"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round (speed)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("NNCF_DISABLE_TELEMETRY", "1")
    from lsq import compile_cache

    cold = tempfile.TemporaryDirectory(prefix="peers-compile-")  # every compile cold
    compile_cache.use(Path(cold.name))
    if "gradients" in args.parts:
        from peer_gradients import report

        report(args.methods)
    fp = float_start(args.out)
    if "accuracy" in args.parts:
        accuracy(args, fp)
    if "speed" in args.parts:
        speed(args, fp)


if __name__ == "__main__":
    main()
