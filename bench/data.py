"""The in-memory data path (lsq.batches) against the per-sample DataLoader pipeline it replaced.

Prints images/s of each loader alone (a full pass over the training set, augmented and
normalised, batch 128) and of a training epoch of full-precision ResNet-20 fed by each, all
in this one process, interleaved round by round so machine noise hits both alike. The old
pipeline is rebuilt here as it was: torchvision v2 transforms applied one sample at a time
(RandomCrop with padding, RandomHorizontalFlip, ToDtype, Normalize) in a DataLoader.

    .venv/bin/python bench/data.py [--dataset fashion-mnist|synthetic] [--rounds 3]
        [--train-steps 20] [--device cpu|cuda] [--workers 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lsq.batches import MemoryBatches
from lsq.data import Augment, TensorImages, load_datasets, on_device
from lsq.networks import build_model
from lsq.spec import DatasetSpec


class PerSample(Dataset):
    """The previous pipeline: each sample transformed on its own by torchvision v2."""

    def __init__(self, images: TensorImages) -> None:
        self.images, self.targets = images.images.cpu(), images.targets.cpu()
        steps: list[v2.Transform] = []
        if images.augment is not None:
            size = self.images.shape[-1]
            steps += [v2.RandomCrop(size, padding=images.augment.pad), v2.RandomHorizontalFlip()]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(images.mean, images.std)]
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.targets[i])


def loaders(images: TensorImages, device: torch.device, workers: int) -> dict[str, object]:
    indices = torch.arange(len(images), device=device)
    extra = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=workers > 0)
    return {
        "per-sample DataLoader": DataLoader(PerSample(images), 128, shuffle=True, **extra),
        "in-memory batches": MemoryBatches(images.to(device), indices, 128, True, seed=1),
    }


def loader_rate(data: object, device: torch.device) -> float:
    """Images/s of one pass over `data`, each batch moved to `device`."""
    start, n = time.perf_counter(), 0
    for x, _ in data:
        x = x.to(device, non_blocking=True)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def train_rate(data: object, device: torch.device, model: torch.nn.Module, steps: int) -> float:
    """Images/s of `steps` full-precision training steps fed by `data`."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start, n = time.perf_counter(), 0
    for i, (x, y) in enumerate(data):
        if i == steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = DatasetSpec(name=args.dataset, image_size=32 if args.dataset == "synthetic" else None)
    train, _, info = load_datasets(spec)
    if train.augment is None:  # synthetic: augment it like CIFAR-10, to time the same work
        train.augment = Augment(pad=4, flip=True)
    train = on_device(train, device)
    model = build_model("resnet20", info.num_classes, info.in_channels).to(device).train()
    rates: dict[str, dict[str, list[float]]] = {"loader": {}, "training": {}}
    for _ in range(args.rounds):
        for name, data in loaders(train, device, args.workers).items():
            rates["loader"].setdefault(name, []).append(loader_rate(data, device))
            steps = args.train_steps
            rates["training"].setdefault(name, []).append(train_rate(data, device, model, steps))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dataset} "
        f"({len(train)} images), {device}, batch 128, median of {args.rounds} rounds"
    )
    for what, by_name in rates.items():
        base = statistics.median(by_name["per-sample DataLoader"])
        for name, r in by_name.items():
            m = statistics.median(r)
            print(f"{what:>8}  {name:<22} {m:10.0f} images/s  {m / base:6.2f}x")


if __name__ == "__main__":
    main()
