"""Write lsq/network_table.json: each torchvision classifier's quantizable layers in the
order a forward runs them, whether it has pretrained weights, its cost per 224 x 224 image
(multiply-accumulates and layer outputs of its Conv2d and Linear layers) and its parameters
(for 10 classes), so that the API
checks `quantization.layers` and estimates a job's cost without torch (lsq.archs, lsq.cost).
Our vit_tiny is in it too. Rerun after changing torchvision:

    .venv/bin/python scripts/network_table.py

tests/unit/test_zoo.py checks the table against real networks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torchvision
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lsq import zoo  # noqa: E402
from lsq.graph import QUANTIZABLE, trace, watched_forward  # noqa: E402
from lsq.networks import vit_tiny  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "lsq" / "network_table.json"


def network(arch: str) -> torch.nn.Module:
    """`arch` for 10 classes with its weights on the meta device (no memory, no init)."""
    kwargs = {"aux_logits": False} if arch in zoo.NO_AUX else {}
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(arch, num_classes=10, **kwargs)
    except NotImplementedError:  # a builder that computes its widths with tensors (RegNet)
        with _no_init():
            return torchvision.models.get_model(arch, num_classes=10, **kwargs).to("meta")


class _no_init:
    """Skip nn.init while building: the values are thrown away."""

    def __enter__(self) -> None:
        self.saved = {n: getattr(torch.nn.init, n) for n in dir(torch.nn.init) if n.endswith("_")}
        for n in self.saved:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)

    def __exit__(self, *_: object) -> None:
        for n, f in self.saved.items():
            setattr(torch.nn.init, n, f)


def cost(model: torch.nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Multiply-accumulates and output values of the Conv2d and Linear layers, per image."""
    tally = [0, 0]

    def count(m: torch.nn.Module, _: object, out: torch.Tensor) -> None:
        per_output = m.in_features if isinstance(m, torch.nn.Linear) else m.weight[0].numel()
        tally[0] += out.numel() * per_output
        tally[1] += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if type(m) in QUANTIZABLE]
    watched_forward(model, example, hooks)
    return tally[0], tally[1]


def main() -> None:
    table = {}
    example = torch.zeros(1, 3, 224, 224, device="meta")
    archs = {a: None for a in zoo.torchvision_archs()} | {"vit_tiny": None}
    for arch in tqdm(archs, desc="networks"):
        model = vit_tiny(10, 3, 224, False).to("meta") if arch == "vit_tiny" else network(arch)
        found = trace(model, example)
        macs, outputs = cost(model, example)
        has_weights = arch != "vit_tiny" and bool(list(torchvision.models.get_model_weights(arch)))
        table[arch] = {"pretrained": has_weights, "layers": found.order, "macs": macs}
        table[arch]["outputs"] = outputs
        table[arch]["parameters"] = sum(p.numel() for p in model.parameters())
    OUT.write_text(json.dumps(table, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{OUT}: {len(table)} networks, {OUT.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
