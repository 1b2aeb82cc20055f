"""lsq.batches: the in-memory data path, checked image by image against what it must produce."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from lsq.batches import MemoryBatches
from lsq.data import Augment, TensorImages
from lsq.distributed import Rank

MEAN, STD = [0.2860], [0.3530]


def images(n: int = 10, size: int = 6, augment: Augment | None = None) -> TensorImages:
    """n distinct 1-channel images; image i's top-left pixel is i + 1 (see `which`)."""
    x = torch.randint(1, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, 0] = torch.arange(n) + 1
    return TensorImages(x.to(torch.uint8), torch.arange(n) % 3, MEAN, STD, augment)


def which(batches: MemoryBatches) -> list[int]:
    """The index of every image the (unaugmented) batches hold, in order."""
    pixels = torch.cat([x[:, 0, 0, 0] for x, _ in batches]) * STD[0] + MEAN[0]
    return [round(p * 255) - 1 for p in pixels.tolist()]


def normalised(x: torch.Tensor) -> torch.Tensor:
    """torchvision's own transforms, one image at a time: the pipeline the batches replace."""
    tf = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    return torch.stack([tf(i) for i in x])


def test_test_batches_are_in_order_and_normalised_exactly_like_torchvision() -> None:
    data = images(10)
    batches = list(MemoryBatches(data, torch.arange(10), 4, shuffle=False))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b for b, _ in batches])
    torch.testing.assert_close(x, normalised(data.images), rtol=0, atol=0)
    assert torch.cat([y for _, y in batches]).tolist() == data.targets.tolist()


def test_an_epoch_visits_every_image_once_in_a_seeded_order() -> None:
    data = images(10)

    def order(seed: int, indices: torch.Tensor | None = None) -> list[int]:
        indices = torch.arange(10) if indices is None else indices
        batches = MemoryBatches(data, indices, 3, shuffle=True, seed=seed)
        assert len(batches) == len(list(batches)) == -(-len(indices) // 3)
        return which(batches)

    a, b, c = order(1), order(1), order(2)
    assert sorted(a) == list(range(10)) and a == b and a != c
    assert sorted(order(1, torch.tensor([7, 2, 5]))) == [2, 5, 7]  # a subset's indices only


def test_augmentation_is_each_images_own_crop_and_flip_of_the_padded_image() -> None:
    pad, n, size = 2, 8, 6
    data = images(n, size, Augment(pad=pad, flip=True))
    batches = MemoryBatches(data, torch.arange(n), n, shuffle=True, seed=5)
    ((x, y),) = list(batches)
    # the same draws, in the same order, from a generator seeded alike
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(n, generator=g)
    offsets, flips = data.augment.draw(n, g)
    padded = torch.nn.functional.pad(data.images, (pad,) * 4)
    for k, i in enumerate(perm.tolist()):
        oy, ox = offsets[k].tolist()
        want = padded[i, :, oy : oy + size, ox : ox + size]
        want = want.flip(-1) if flips[k] else want
        torch.testing.assert_close(x[k], normalised(want[None])[0], rtol=0, atol=0)
        assert int(y[k]) == int(data.targets[i])
    assert 0 < int(flips.sum()) < n and len({tuple(o) for o in offsets.tolist()}) > 1


def test_augment_draws_cover_every_offset_and_both_flips() -> None:
    offsets, flips = Augment(pad=4, flip=True).draw(4000, torch.Generator().manual_seed(0))
    assert offsets.min() == 0 and offsets.max() == 8
    assert set(offsets[:, 0].tolist()) == set(range(9)) == set(offsets[:, 1].tolist())
    assert 0.45 < flips.float().mean() < 0.55


@pytest.mark.parametrize("n", [10, 11])
def test_data_parallel_ranks_share_the_shuffled_order_in_equal_disjoint_parts(n: int) -> None:
    def ranks(data: TensorImages) -> list[MemoryBatches]:
        return [MemoryBatches(data, torch.arange(n), 4, True, 3, Rank(r, 2)) for r in (0, 1)]

    parts = [which(b) for b in ranks(images(n))]
    single = which(MemoryBatches(images(n), torch.arange(n), 4, True, 3))
    assert len(parts[0]) == len(parts[1]) == -(-n // 2)  # equal shares, half the batch each
    assert all(b.batch_size == 2 for b in ranks(images(n)))
    # every other image of the single-process order, the first one repeated to even out
    assert parts[0] == (single + single)[0 : n + n % 2 : 2]
    assert parts[1] == (single + single)[1 : n + n % 2 : 2]
    # augmented, each rank's batches are its own images' crops
    for batches in ranks(images(n, augment=Augment(pad=1, flip=True))):
        assert sum(len(y) for _, y in batches) == -(-n // 2)
