"""An lsq.networks plugin: a builder that lsq-service calls with the dataset's shape."""

from __future__ import annotations

from torch import nn


def example_cnn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Two convolutions and a linear classifier, for images of any size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )
