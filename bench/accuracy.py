"""How much accuracy the four results-table variants keep, on full Fashion-MNIST.

The recipe: ResNet-20, a 4-epoch full-precision model (lr 0.1, cosine), then 2 epochs of LSQ
from it (lr 0.01, cosine, weight decay 2.5e-5, batch 128) for each variant: W[-1,0,1] and
W[-1,0,1]/A[0,1,2,3], with the first and last layer float and quantized alike. Each
configuration (one controlled change against the defaults) runs every variant once per seed.
Runs go through lsq.train.run (what `lsq run` calls) with training.compile on; every run's
folder stays under --out. Prints the table as Markdown (mean over seeds, drop against full
precision), which bench/accuracy.md records.

    .venv/bin/python bench/accuracy.py [--seeds 0 1] [--configs default distill ...]
        [--variants W+A] [--dataset fashion-mnist|synthetic-32] [--compile on|off]
        [--fp-epochs 4] [--out runs/accuracy]
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from lsq.spec import JobSpec
from lsq.train import run

DATASETS = {
    "fashion-mnist": {"name": "fashion-mnist"},
    # CIFAR-shaped (3 x 32 x 32, 10 classes), small enough to be learnt imperfectly
    "synthetic-32": {"name": "synthetic", "train_size": 2048, "test_size": 1024, "image_size": 32},
}
FP = {"epochs": 4, "batch_size": 128, "lr": 0.1, "weight_decay": 1e-4, "compile": "on"}
LSQ = {"epochs": 2, "batch_size": 128, "lr": 0.01, "weight_decay": 2.5e-5, "compile": "on"}
W, A = [-1, 0, 1], [0, 1, 2, 3]
EIGHT_BITS = {"bits": 8, "signed": True}
VARIANTS = {
    "W, first/last float": {"weight": W, "first_last": "float"},
    "W+A, first/last float": {"weight": W, "activation": A, "first_last": "float"},
    "W, first/last same": {"weight": W, "first_last": "same"},
    "W+A, first/last same": {"weight": W, "activation": A, "first_last": "same"},
}


def configs(fp_model: str) -> dict[str, dict]:
    """Changes to the spec, one at a time against the defaults: {section: {field: value}}."""
    return {
        "default": {},
        "distill": {"training": {"distill": {"teacher": fp_model}}},  # T 1, alpha 0.5 (paper's)
        # Hinton's softer targets, weighing the teacher's 0.9 and the labels 0.1
        "distill-t4": {
            "training": {"distill": {"teacher": fp_model, "temperature": 4.0, "alpha": 0.9}}
        },
        "per-channel": {"quantization": {"granularity": "per_channel"}},
        "mse-init": {"quantization": {"activation_init": "mse"}},
        "weight-mse-init": {"quantization": {"weight_init": "mse"}},
        "bn-reestimate": {"training": {"bn_reestimate": 100}},  # the default since spec v2
        "no-bn-reestimate": {"training": {"bn_reestimate": 0}},  # the default before
        "step-lr-10": {"training": {"step_lr_scale": 10}},
        "cosine-batch": {"training": {"scheduler": "cosine_batch"}},
        "warmup": {"training": {"warmup_epochs": 0.5}},
        "4-epochs": {"training": {"epochs": 4}},
        # the image entering the first conv at 8 bits (it is 8-bit data); for first/last same
        "8-bit-input": {"quantization": {"layers": {"conv1": {"activation": EIGHT_BITS}}}},
        # both 8-bit inputs of the paper's first and last layers (their weights stay the job's)
        "8-bit-first-last-input": {
            "quantization": {
                "layers": {"conv1": {"activation": EIGHT_BITS}, "fc": {"activation": {"bits": 8}}}
            }
        },
        # two changes at once: how far both go together
        "8-bit-first-last-input-weight-mse": {
            "quantization": {
                "layers": {"conv1": {"activation": EIGHT_BITS}, "fc": {"activation": {"bits": 8}}},
                "weight_init": "mse",
            }
        },
        "weight-mse-distill-t4": {
            "quantization": {"weight_init": "mse"},
            "training": {"distill": {"teacher": fp_model, "temperature": 4.0, "alpha": 0.9}},
        },
        "4-epochs-8-bit-input": {
            "training": {"epochs": 4},
            "quantization": {"layers": {"conv1": {"activation": EIGHT_BITS}}},
        },
        # 4 epochs' SGD steps in 2 epochs' data passes: is it steps or passes that settle it?
        "batch-64": {"training": {"batch_size": 64}},
        "batch-64-8-bit-input": {
            "training": {"batch_size": 64},
            "quantization": {"layers": {"conv1": {"activation": EIGHT_BITS}}},
        },
    }


def job(
    name: str, dataset: str, quantization: dict, training: dict, init: str | None = None
) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": name,
            "dataset": DATASETS[dataset],
            "model": {"arch": "resnet20", "init": init},
            "quantization": quantization,
            "training": training,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--configs", nargs="+", default=["default", "distill"])
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    parser.add_argument(
        "--compile", choices=["on", "off", "auto"], default="on", help="training.compile"
    )
    parser.add_argument(
        "--variants", default="", help="only the variants whose name contains this, e.g. W+A"
    )
    parser.add_argument("--fp-epochs", type=int, default=FP["epochs"], help="of the float model")
    args = parser.parse_args()
    fp_dir = args.out / ("fp" if args.fp_epochs == FP["epochs"] else f"fp-{args.fp_epochs}")
    fp_training = {**FP, "epochs": args.fp_epochs, "seed": 0, "compile": args.compile}
    fp = run(job("fp", args.dataset, {}, fp_training), fp_dir, resume=True)
    print(f"full precision: {fp.final_top1:.2f}%", flush=True)
    fp_model = str(fp_dir / "model.pt")
    rows = []
    for config in args.configs:
        change = configs(fp_model)[config]
        for variant, quantization in VARIANTS.items():
            if args.variants not in variant:
                continue
            top1 = []
            for seed in args.seeds:
                name = re.sub(r"[^A-Za-z0-9+]+", "-", f"{config} {variant} seed {seed}")
                training = {**LSQ, **change.get("training", {}), "seed": seed}
                training["compile"] = args.compile
                quantized = {**quantization, **change.get("quantization", {})}
                spec = job(name, args.dataset, quantized, training, init=fp_model)
                result = run(spec, args.out / name, resume=True)
                top1.append(result.final_top1)
                print(
                    f"{config:>8} {variant:<22} seed {seed}: {result.final_top1:.2f}%", flush=True
                )
            rows.append((config, variant, top1))
    print(f"\n| configuration | variant | test top-1 (seeds {args.seeds}) | mean | drop |")
    print("|---|---|---|---|---|")
    fp_top1 = f"{fp.final_top1:.2f}"
    print(f"| full precision | {args.fp_epochs} epochs | {fp_top1} | {fp_top1} | |")
    for config, variant, top1 in rows:
        mean = statistics.mean(top1)
        each = ", ".join(f"{t:.2f}" for t in top1)
        print(f"| {config} | {variant} | {each} | {mean:.2f} | {fp.final_top1 - mean:.2f} |")


if __name__ == "__main__":
    main()
