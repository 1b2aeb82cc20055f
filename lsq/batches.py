"""Batches of an in-memory set, cut, augmented and normalised on the training device.

A DataLoader transforms one sample at a time in worker processes: a few thousand images/s per
process, far below what a GPU trains ResNet-20 at. A set that fits in memory (CIFAR-10,
Fashion-MNIST, synthetic) is instead one uint8 tensor on the device; each batch is an index,
a batched crop-and-flip and one normalisation. No worker processes, no host syncs.

Shuffle and augmentation come from one generator seeded by the caller (seed and epoch), so a
resumed epoch sees exactly the batches it would have seen. Under data parallelism each rank
takes every world-th image of the shuffled order (as DistributedSampler does, padded so that
every rank has as many).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from .data import TensorImages
from .distributed import SINGLE, Rank


class MemoryBatches:
    """Iterable of (images, labels) batches, like a DataLoader over `indices` of `images`."""

    def __init__(
        self,
        images: TensorImages,
        indices: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: Rank = SINGLE,
    ) -> None:
        self.images, self.indices, self.shuffle, self.seed = images, indices, shuffle, seed
        self.split = rank if rank.distributed and shuffle else SINGLE
        self.batch_size = batch_size // self.split.world
        self.per_rank = math.ceil(len(indices) / self.split.world)

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed)
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=g).to(order.device)]
        augment = self.images.augment if self.shuffle else None
        draws = augment.draw(len(order), g) if augment is not None else None
        if self.split.distributed:  # every world-th of the shuffled order, in equal shares
            total, mine = (
                self.per_rank * self.split.world,
                slice(self.split.rank, None, self.split.world),
            )
            reps = math.ceil(total / len(order))
            order = order.repeat(reps)[:total][mine]
            draws = draws and tuple(
                d.repeat(reps, *[1] * (d.dim() - 1))[:total][mine] for d in draws
            )
        if draws is not None:
            draws = tuple(d.to(order.device) for d in draws)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            cut = None if draws is None else tuple(d[start : start + len(batch)] for d in draws)
            yield self.images.batch(self.images.images[batch], cut), self.images.targets[batch]


Batches = DataLoader | MemoryBatches  # what the loop trains and evaluates on
