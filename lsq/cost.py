"""What a job costs, estimated before it runs and without torch: its multiply-accumulates.

A network's cost per image is counted from its layers' shapes (every Conv2d and Linear; batch
norms, pools and additions are cheap beside them); a test checks each count against the real
modules. A job costs, per epoch, a training pass over its training images (forward and
backward: about 3 forward passes, as in Kaplan et al. 2020), a teacher's forward pass when it
distils, and an evaluation of its test images; a sensitivity job evaluates the test set once
per probed layer, plus the whole network quantized and in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .archs import CIFAR_DEPTHS, TORCHVISION

if TYPE_CHECKING:
    from .spec import JobSpec

TRAINING_PASSES = 3  # forward + backward, the backward about twice the forward


@dataclass(frozen=True)
class Geometry:
    """A dataset's images and their number when no subset is asked for."""

    channels: int
    size: int
    classes: int
    train_images: int
    test_images: int


# As lsq.data loads them (a test compares); ImageNet's counts are ILSVRC-2012's.
DATASETS = {
    "cifar10": Geometry(3, 32, 10, 50_000, 10_000),
    "fashion-mnist": Geometry(1, 28, 10, 60_000, 10_000),
    "imagenet": Geometry(3, 224, 1000, 1_281_167, 50_000),
    "synthetic": Geometry(3, 16, 10, 2048, 512),
}


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _conv(size: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> tuple[int, int]:
    """(MACs, output side) of a square convolution padded as lsq.networks pads it."""
    side = _out(size, kernel, stride, kernel // 2)
    return side * side * kernel * kernel * c_in * c_out, side


def _cifar_macs(depth: int, size: int, channels: int, classes: int) -> int:
    total, side = _conv(size, channels, 16, 3)
    c_in = 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range((depth - 2) // 6):
            first, side = _conv(side, c_in, planes, 3, stride if block == 0 else 1)
            second, _ = _conv(side, planes, planes, 3)
            total, c_in = total + first + second, planes
    return total + 64 * classes


def _torchvision_macs(arch: str, size: int, channels: int, classes: int) -> int:
    stages, per_block = TORCHVISION[arch]
    expansion = 4 if per_block == 3 else 1
    total, side = _conv(size, channels, 64, 7, 2)
    side = _out(side, 3, 2, 1)  # the max pool
    c_in = 64
    for stage, count in enumerate(stages):
        planes = 64 << stage
        for block in range(count):
            stride = 2 if block == 0 and stage > 0 else 1
            c_out = planes * expansion
            if block == 0 and (stride != 1 or c_in != c_out):  # the projected shortcut
                total += _conv(side, c_in, c_out, 1, stride)[0]
            if expansion == 1:
                macs, new_side = _conv(side, c_in, planes, 3, stride)
                total += macs + _conv(new_side, planes, planes, 3)[0]
            else:  # bottleneck: 1x1, then the strided 3x3, then 1x1
                total += _conv(side, c_in, planes, 1)[0]
                macs, new_side = _conv(side, planes, planes, 3, stride)
                total += macs + _conv(new_side, planes, c_out, 1)[0]
            side, c_in = new_side, c_out
    return total + c_in * classes


def network_macs(arch: str, size: int, channels: int, classes: int) -> int:
    """Multiply-accumulates of one forward pass of one `size` x `size` image."""
    if arch.startswith("resnet") and int(arch[6:]) in CIFAR_DEPTHS:
        return _cifar_macs(int(arch[6:]), size, channels, classes)
    return _torchvision_macs(arch, size, channels, classes)


def job_tmacs(spec: JobSpec) -> float:
    """The whole job's multiply-accumulates, in units of 10^12 (an estimate: see above)."""
    data, geometry = spec.dataset, DATASETS[spec.dataset.name]
    size = data.image_size or geometry.size
    per_image = network_macs(spec.model.arch, size, geometry.channels, geometry.classes)
    train = min(data.train_size or geometry.train_images, geometry.train_images)
    test = min(data.test_size or geometry.test_images, geometry.test_images)
    if data.name == "synthetic":  # made to order: as many as asked
        train, test = data.train_size or train, data.test_size or test
    if spec.sensitivity is not None:
        probes = len(spec.sensitivity.probed(spec.model.arch, spec.quantization)) + 2
        return probes * test * per_image / 1e12
    teacher = 1 if spec.training.distill is not None else 0
    per_epoch = (TRAINING_PASSES + teacher) * train + test
    return spec.training.epochs * per_epoch * per_image / 1e12
