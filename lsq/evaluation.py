"""Evaluating a model on a test set (loss and top-1/top-5, or counts by true and predicted
class), and cancelling between two batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .batches import Batches
from .device import autocast
from .metrics import Accuracy


class Cancelled(Exception):
    """The job was cancelled between two batches (of training or evaluation) or two final
    files; the finished epochs are kept."""


def stop_if_cancelled(should_cancel: Callable[[], bool] | None, during: str) -> None:
    """Raise Cancelled when `should_cancel()` is true (None: the run cannot be cancelled)."""
    if should_cancel is not None and should_cancel():
        raise Cancelled(f"cancelled during {during}")


def hits(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == y[:, None]).any(dim=1).sum()


def _predictions(
    model: nn.Module,
    data: Batches,
    device: torch.device,
    amp: torch.dtype | None,
    should_cancel: Callable[[], bool] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The model's logits and the labels, batch by batch, in eval mode."""
    model.eval()
    for x, y in data:
        stop_if_cancelled(should_cancel, "evaluation")
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        yield logits, y


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: Batches,
    device: torch.device,
    amp: torch.dtype | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Accuracy:
    """Test loss and top-1/top-5 accuracy in percent; `should_cancel()` is asked before each
    batch (a large test set takes long)."""
    loss = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for logits, y in _predictions(model, data, device, amp, should_cancel):
        loss += F.cross_entropy(logits.float(), y, reduction="sum")
        top1 += hits(logits, y, 1)
        top5 += hits(logits, y, 5)
        n += len(y)
    return Accuracy(loss=loss.item() / n, top1=100 * top1.item() / n, top5=100 * top5.item() / n)


@torch.inference_mode()
def confusion_matrix(
    model: nn.Module,
    data: Batches,
    device: torch.device,
    classes: int,
    amp: torch.dtype | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[list[int]]:
    """Test images counted by true class (rows) and predicted class (columns)."""
    counts = torch.zeros(classes * classes, device=device, dtype=torch.long)
    for logits, y in _predictions(model, data, device, amp, should_cancel):
        counts += torch.bincount(y * classes + logits.argmax(1), minlength=classes * classes)
    return counts.view(classes, classes).tolist()
