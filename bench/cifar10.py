"""The reference's CIFAR-10 table on one GPU, in one command: the GPU target.

Runs the jobs of examples/experiment-cifar10-resnet20.yaml (read from it, so the two agree)
through lsq.train.run, without the service: its full-precision ResNet-20 (200 epochs), then
its four quantized rows (90 epochs each) started from it. Every job resumes from its folder
under --out, so a stopped run goes on where it was. Prints the table, each row beside the
reference's figure, as Markdown for bench/README.md.

    .venv/bin/python bench/cifar10.py --root /data/cifar10 [--out runs/cifar10]
        [--device cuda] [--epochs 90] [--fp-epochs 200]

--root holds CIFAR-10's python batches (data_batch_1..5, test_batch). --epochs and
--fp-epochs shorten the recipe for a trial run (give it its own --out: a folder resumes only
the job it was made for); the table needs the defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from lsq.spec import JobSpec
from lsq.train import run

EXPERIMENT = Path(__file__).parent.parent / "examples" / "experiment-cifar10-resnet20.yaml"


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`base` with `change` laid over it, section by section: what the service's
    api.service.experiments.overrides.merge does (not importable here: bench/api.py shadows
    the `api` package for scripts run from bench/)."""
    out = dict(base)
    for key, value in change.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merged(base[key], value) if both else value
    return out


def specs(args: argparse.Namespace) -> tuple[JobSpec, list[tuple[JobSpec, float]]]:
    """The full-precision job and the quantized ones with their reference top-1."""
    experiment = yaml.safe_load(EXPERIMENT.read_text())
    ours = {
        "dataset": {"root": str(args.root)},
        "training": {"epochs": args.epochs, "device": args.device},
    }
    base = merged(experiment["base"], ours)
    baseline = {k: v for k, v in experiment["baseline"].items() if k != "train"}
    fp_training = {"epochs": args.fp_epochs or baseline["training"]["epochs"]}
    fp = merged(merged(base, baseline), {"name": "fp", "training": fp_training})
    fp["quantization"] = {}  # the baseline is float, whatever the base says (as the service's)
    fp.pop("sensitivity", None)
    init = str(args.out / "fp" / "model.pt")
    rows = []
    for variant in experiment["variants"]:
        row = {k: v for k, v in variant.items() if k not in ("name", "reference")}
        spec = merged(base, {**row, "name": f"variant-{variant['name']}"})
        spec = merged(spec, {"model": {"init": init}})
        rows.append((JobSpec.model_validate(spec), variant["reference"]["test_top1"]))
    return JobSpec.model_validate(fp), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="CIFAR-10's python batches")
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10"))
    parser.add_argument("--device", default="auto", help="training.device: auto, cuda, cpu")
    parser.add_argument("--epochs", type=int, default=90, help="of each quantized row")
    parser.add_argument("--fp-epochs", type=int, default=0, help="0: the experiment's (200)")
    args = parser.parse_args()
    fp_spec, rows = specs(args)
    fp = run(fp_spec, args.out / "fp", resume=True)
    print(f"full precision: {fp.final_top1:.2f}%", flush=True)
    table = ["| row | levels | test top-1 | drop | reference |", "|---|---|---|---|---|"]
    for spec, reference in rows:
        result = run(spec, args.out / spec.name, resume=True)
        q = spec.quantization
        levels = f"W{q.weight}" + (f"/A{q.activation}" if q.activation else "")
        drop = fp.final_top1 - result.final_top1
        table.append(
            f"| {spec.name} | {levels}, first/last {q.first_last} "
            f"| {result.final_top1:.2f} | {drop:.2f} | {reference:.2f} |"
        )
        print(table[-1], flush=True)
    print("\n".join(table))


if __name__ == "__main__":
    main()
