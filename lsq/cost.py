"""What a job costs, estimated before it runs and without torch: its multiply-accumulates.

A network's cost per image is counted from its layers' shapes (every Conv2d and Linear; batch
norms, pools and additions are cheap beside them); a test checks each count against the real
modules. Other networks' costs at 224 px come from lsq/network_table.json, scaled by area.
A job costs, per epoch, a training pass over its training images (forward and backward:
about 3 forward passes, as in Kaplan et al. 2020), a teacher's forward pass when it distils,
and an evaluation of its test images; a sensitivity job evaluates the test set once
per probed layer, plus the whole network quantized and in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .archs import cifar_depth, table

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
    # A user's folder is not read to cost it: as large as ImageNet unless a subset is given.
    "image_folder": Geometry(3, 32, 1000, 1_281_167, 50_000),
}


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class Tally:
    """A network's cost per image: multiply-accumulates, and the values its Conv2d and Linear
    layers output (what training keeps for the backward pass scales with them); and its
    parameters, whatever the images."""

    macs: int = 0
    outputs: int = 0
    parameters: int = 0

    def conv(self, side: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> int:
        """Count a square convolution padded as lsq.networks pads it, and the batch norm after
        it; its output side."""
        out = _out(side, kernel, stride, kernel // 2)
        self.macs += out * out * kernel * kernel * c_in * c_out
        self.outputs += out * out * c_out
        self.parameters += kernel * kernel * c_in * c_out + 2 * c_out
        return out

    def linear(self, c_in: int, c_out: int) -> None:
        self.macs += c_in * c_out
        self.outputs += c_out
        self.parameters += c_in * c_out + c_out


def _cifar(depth: int, size: int, channels: int, classes: int) -> Tally:
    tally = Tally()
    side, c_in = tally.conv(size, channels, 16, 3), 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range((depth - 2) // 6):
            side = tally.conv(side, c_in, planes, 3, stride if block == 0 else 1)
            tally.conv(side, planes, planes, 3)
            c_in = planes
    tally.linear(64, classes)
    return tally


# timm's networks and a deployment's own are not in the table: costed as its costliest network
# per image (a request is hostile until proven otherwise; a cheap guess would lift the limits).
def _costliest() -> dict[str, Any]:
    return max(table().values(), key=lambda entry: entry["macs"])


def network_cost(arch: str, size: int, channels: int, classes: int) -> Tally:
    """The cost of one forward pass of one `size` x `size` image: counted for our CIFAR
    ResNets, scaled from 224 px for the networks of lsq/network_table.json."""
    if depth := cifar_depth(arch):
        return _cifar(depth, size, channels, classes)
    entry = table().get(arch) or _costliest()
    scale = (size / 224) ** 2
    return Tally(round(entry["macs"] * scale), round(entry["outputs"] * scale), entry["parameters"])


def network_macs(arch: str, size: int, channels: int, classes: int) -> int:
    """Multiply-accumulates of one forward pass of one `size` x `size` image."""
    return network_cost(arch, size, channels, classes).macs


def _per_image(spec: JobSpec, network: Tally | None) -> Tally:
    if network is not None:  # measured (a user's ONNX model, at its own image size)
        return network
    geometry = DATASETS[spec.dataset.name]
    size = spec.dataset.image_size or geometry.size
    channels = spec.dataset.channels or geometry.channels
    return network_cost(spec.model.arch, size, channels, geometry.classes)


def training_bytes(spec: JobSpec, one_host: bool = False, network: Tally | None = None) -> int:
    """What one device holds to train one batch: about two float32 values per layer output
    per image for the backward pass (the layer's output and the activation after it;
    measured: ResNet-50 at 256 x 256 holds 113 MB an image, this says 115 MB), and 16 bytes
    per parameter (the weight, its gradient, its momentum and its fake-quantized copy).
    `one_host` (CPU training): its `devices` processes share one host's memory, the whole
    batch and a copy of the network each. `network`: the network's cost where lsq.cost cannot
    count it by name (a user's ONNX model, measured when it was sent)."""
    t = spec.training
    whole = one_host or t.device == "cpu"
    per_device = t.batch_size if whole else -(-t.batch_size // t.devices)
    cost = _per_image(spec, network)
    copies = t.devices if whole else 1
    held = per_device * cost.outputs * BYTES_KEPT_PER_OUTPUT
    return held + copies * cost.parameters * BYTES_PER_PARAMETER


BYTES_KEPT_PER_OUTPUT = 8
BYTES_PER_PARAMETER = 16


def job_tmacs(spec: JobSpec, network: Tally | None = None) -> float:
    """The whole job's multiply-accumulates, in units of 10^12 (an estimate: see above;
    `network` as for training_bytes)."""
    data, geometry = spec.dataset, DATASETS[spec.dataset.name]
    per_image = _per_image(spec, network).macs
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
