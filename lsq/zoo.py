"""Networks we did not write: torchvision's classifiers, timm's (an optional extra), and those a
deployment registers in the `lsq.networks` entry-point group. Each is adapted to the dataset's
channels and classes by finding its first convolution and its classifier in a traced forward,
whatever their attribute names."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from .archs import PLUGIN_GROUP, plugins
from .graph import Trace, trace

IMAGENET = (3, 1000)  # the channels and classes pretrained weights were trained for
# Builders that fix their input size at construction (a position embedding per patch).
SIZED = {"vit_": "image_size"}
# Auxiliary heads change the output to a tuple in training; the loss wants the logits alone.
NO_AUX = {"googlenet", "inception_v3"}


@functools.cache
def torchvision_archs() -> tuple[str, ...]:
    """Every classification network torchvision registers, by builder name."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def torchvision_model(
    arch: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool
) -> nn.Module:
    kwargs: dict[str, object] = {"aux_logits": False} if arch in NO_AUX else {}
    if pretrained:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        _require_cached(arch, weights.url)
        model = torchvision.models.get_model(arch, weights=weights, **kwargs)
    else:
        kwargs |= {v: image_size for k, v in SIZED.items() if arch.startswith(k)}
        try:
            model = torchvision.models.get_model(arch, num_classes=num_classes, **kwargs)
        except (AssertionError, ValueError) as e:  # a ViT's patches must tile the image
            raise ValueError(f"{arch} cannot be built for {image_size} px images: {e}") from None
    return adapt(model, num_classes, in_channels, image_size, keep_weights=pretrained)


def timm_model(
    name: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool
) -> nn.Module:
    os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is first imported
    try:
        import huggingface_hub.constants
        import timm
    except ImportError:
        raise ValueError(f"timm:{name} needs timm: pip install 'lsq-service[timm]'") from None
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # and if it was imported before: never fetch
    if not timm.is_model(name):
        raise ValueError(f"timm has no network {name!r} (timm.list_models() lists them)")
    args = {"pretrained": pretrained, "num_classes": num_classes, "in_chans": in_channels}
    try:
        try:  # a ViT's position embedding is sized for the images; a CNN takes no img_size
            model = timm.create_model(name, img_size=image_size, **args)
        except TypeError:
            model = timm.create_model(name, **args)
    except (OSError, RuntimeError, ValueError, AssertionError) as e:
        where = huggingface_hub.constants.HF_HUB_CACHE
        if pretrained:
            raise ValueError(
                f"timm:{name}'s pretrained weights are not in the Hugging Face cache ({where}): "
                "download them there first; nothing is downloaded at run time"
            ) from None
        raise ValueError(f"timm could not build {name}: {str(e)[:300]}") from None
    traced(model, in_channels, image_size)  # built for the data by timm: only checked
    return model


def plugin_model(
    arch: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool
) -> nn.Module:
    if pretrained:
        raise ValueError(f"{arch} is a deployment's own network: give a model.pt, not pretrained")
    build: Callable[..., nn.Module] = plugins()[arch].load()
    model = build(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if not isinstance(model, nn.Module):
        raise ValueError(f"the {PLUGIN_GROUP} entry point {arch} returned {type(model).__name__}")
    traced(model, in_channels, image_size)
    return model


def adapt(
    model: nn.Module, num_classes: int, in_channels: int, image_size: int, keep_weights: bool
) -> nn.Module:
    """A new first convolution for `in_channels` (from the colour channels' mean response when
    `keep_weights`) and a new classifier for `num_classes`, where they differ."""
    found = traced(model, IMAGENET[0], image_size)
    first_name, last_name = found.order[0], found.order[-1]
    first, last = model.get_submodule(first_name), model.get_submodule(last_name)
    if isinstance(first, nn.Conv2d) and first.in_channels != in_channels:
        model.set_submodule(first_name, _conv_for_channels(first, in_channels, keep_weights))
    out = last.out_features if isinstance(last, nn.Linear) else getattr(last, "out_channels", 0)
    if out != num_classes:
        model.set_submodule(last_name, _head_for_classes(last, num_classes))
    return model


def traced(model: nn.Module, channels: int, image_size: int) -> Trace:
    """One blank image through `model`; ValueError says why it cannot take such images."""
    try:
        found = trace(model, torch.zeros(1, channels, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError, TypeError) as e:
        problem = f"this network cannot run on {image_size}x{image_size} images: {str(e)[:300]}"
        raise ValueError(problem) from None
    if not found.order:
        raise ValueError("no Conv2d or Linear module ran in a forward: nothing to quantize")
    return found


def _conv_for_channels(old: nn.Conv2d, in_channels: int, keep_weights: bool) -> nn.Conv2d:
    if old.groups != 1:
        raise ValueError("the first convolution is grouped: it cannot take other input channels")
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
        bias=old.bias is not None, padding_mode=old.padding_mode,
    )  # fmt: skip
    if keep_weights:  # a grey image is the sum of its colour channels' responses
        with torch.no_grad():
            mean = old.weight.sum(1, keepdim=True) / in_channels
            new.weight.copy_(mean.repeat(1, in_channels, 1, 1))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    return new


def _head_for_classes(old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    if isinstance(old, nn.Conv2d):  # SqueezeNet classifies with a 1x1 convolution
        return nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    raise ValueError(f"the last layer is a {type(old).__name__}, not a classifier we can resize")


def _require_cached(arch: str, url: str) -> None:
    """Pretrained weights come from torch's cache only: nothing is downloaded at run time."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if not path.is_file():
        raise ValueError(
            f"{arch}'s pretrained weights are not in torch's cache: put {path.name} (from "
            f"{url}) at {path} ($TORCH_HOME/hub/checkpoints)"
        )
