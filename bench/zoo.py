"""How much accuracy networks other than ResNet-20 keep: the Fashion-MNIST quick recipe (a
10k/2k subset, 3 epochs of full precision at lr 0.1, then 2 epochs of LSQ at lr 0.01, cosine,
batch 128) on resnet20, mobilenet_v2 and vit_tiny, at W4A4 and W[-1,0,1]/A[0,1,2,3] (first
and last layers float). Then, on MobileNetV2, one change at a time: the inputs' signs assumed
(every layer post-ReLU, as before they were measured) instead of measured, and LSQ+ offsets
instead of signed sets. Prints the table bench/zoo.md records; every run's folder stays under
--out, and a run finished there is read, not run again.

    .venv/bin/python bench/zoo.py [--archs resnet20 mobilenet_v2 vit_tiny] [--out runs/zoo]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lsq.quantizer import LsqQuantizer
from lsq.spec import JobSpec
from lsq.train import run

DATA = {"name": "fashion-mnist", "train_size": 10_000, "test_size": 2_000}
FP = {"epochs": 3, "batch_size": 128, "lr": 0.1, "weight_decay": 1e-4, "scheduler": "cosine"}
LSQ = {"epochs": 2, "batch_size": 128, "lr": 0.01, "weight_decay": 2.5e-5, "scheduler": "cosine"}
VARIANTS = {
    "W4A4": {"weight": {"bits": 4, "signed": True}, "activation": {"bits": 4}},
    "W[-1,0,1]/A[0,1,2,3]": {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]},
}


def job(
    name: str,
    arch: str,
    training: dict,
    init: str | None = None,
    q: dict | None = None,
    data: dict | None = None,
) -> JobSpec:
    spec = {"name": name, "dataset": data or DATA, "model": {"arch": arch, "init": init}}
    return JobSpec.model_validate(spec | {"training": training, "quantization": q or {}})


def top1(spec: JobSpec, out: Path) -> float:
    """The run's final test top-1, from its folder when an earlier invocation finished it."""
    done = out / "metrics.json"
    if done.is_file() and json.loads(done.read_text()).get("result"):
        return json.loads(done.read_text())["result"]["final_top1"]
    try:
        return run(spec, out).final_top1
    except RuntimeError as e:  # "training diverged": a row that says so
        print(f"{spec.name}: {e}")
        return float("nan")


def signs_and_offsets(out: Path, fp: float) -> list[tuple[str, str, float, float]]:
    """MobileNetV2 at W[-1,0,1]/A[0,1,2,3], one change at a time: inputs assumed post-ReLU
    (seed 0), and LSQ+ offsets beside measured signed sets (seeds 0 and 1)."""
    label, init = "W[-1,0,1]/A[0,1,2,3]", str(out / "fp" / "model.pt")
    LsqQuantizer.measure_sign = False
    acc = top1(job("assumed", "mobilenet_v2", LSQ, init, VARIANTS[label]), out / "assumed-signs")
    LsqQuantizer.measure_sign = True
    rows = [("mobilenet_v2", f"{label}, signs assumed (post-ReLU)", acc, fp - acc)]
    offsets = VARIANTS[label] | {"activation_offset": True}
    for seed in (0, 1):
        recipe, tail = LSQ | {"seed": seed}, f"-seed{seed}" if seed else ""
        for name, q, folder in (("signed", VARIANTS[label], label.replace("/", "-")),
                                ("LSQ+ offsets", offsets, "lsq-plus-offsets")):  # fmt: skip
            acc = top1(job(name, "mobilenet_v2", recipe, init, q), out / f"{folder}{tail}")
            rows.append(("mobilenet_v2", f"{label}, {name}, seed {seed}", acc, fp - acc))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["resnet20", "mobilenet_v2", "vit_tiny"])
    parser.add_argument("--out", type=Path, default=Path("runs/zoo"))
    args = parser.parse_args()
    rows = []
    for arch in args.archs:
        fp_out = args.out / arch / "fp"
        fp = top1(job(f"{arch}-fp", arch, FP), fp_out)
        rows.append((arch, "full precision", fp, None))
        for label, q in VARIANTS.items():
            spec = job(f"{arch}-{label}", arch, LSQ, str(fp_out / "model.pt"), q)
            acc = top1(spec, args.out / arch / label.replace("/", "-"))
            rows.append((arch, label, acc, fp - acc))
        if arch == "mobilenet_v2":
            rows += signs_and_offsets(args.out / arch, fp)
    print("| network | levels | test top-1 (%) | drop (points) |\n|---|---|---:|---:|")
    for arch, label, acc, drop in rows:
        print(f"| {arch} | {label} | {acc:.2f} | {'' if drop is None else f'{drop:.2f}'} |")


if __name__ == "__main__":
    main()
