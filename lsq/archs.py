"""Each network's quantizable layers (its Conv2d and Linear modules) by name, without building
it: torch-free, so the API checks `quantization.layers` patterns in microseconds. A test
compares these names with the real modules of every network in lsq.networks."""

from __future__ import annotations

CIFAR_DEPTHS = (20, 32, 44, 56)
# torchvision's ResNets: blocks per stage, and convs per block (basic 2, bottleneck 3)
TORCHVISION = {"resnet18": ((2, 2, 2, 2), 2), "resnet34": ((3, 4, 6, 3), 2)}
TORCHVISION["resnet50"] = ((3, 4, 6, 3), 3)


def pretrained_missing(arch: str) -> str | None:
    """Why `model.init: pretrained` cannot build `arch`, or None (torchvision's ResNets can)."""
    if arch in TORCHVISION:
        return None
    return f"{arch} has no pretrained weights (only {', '.join(TORCHVISION)} do): give a model.pt"


def layer_names(arch: str) -> list[str]:
    """The names of `arch`'s Conv2d and Linear modules, in registration order."""
    if arch.startswith("resnet") and int(arch[6:]) in CIFAR_DEPTHS:
        n = (int(arch[6:]) - 2) // 6  # blocks per stage, 3 stages
        blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(n)]
        return ["conv1", *[f"{block}.conv{c}" for block in blocks for c in (1, 2)], "fc"]
    stages, per_block = TORCHVISION[arch]
    names = ["conv1"]
    for stage, count in enumerate(stages, start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            names += [f"{prefix}.conv{c}" for c in range(1, per_block + 1)]
            # the first block of a stage projects its shortcut, except where shapes agree
            if block == 0 and (stage > 1 or per_block == 3):
                names.append(f"{prefix}.downsample.0")
    return [*names, "fc"]
