"""Train and evaluate one job: full precision, or quantized from a full-precision start.

``run(spec, out_dir)`` is the whole job. It writes, in out_dir, ``checkpoint.pt`` after every
epoch (enough to resume and end with the same weights), ``metrics.json``, and at the end
``model.pt`` (the float state dict, usable as another job's ``model.init``) and, for a quantized
job, ``model-int.pt`` (the integer export).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import checkpoint, export
from .convert import quantize_model
from .data import DatasetInfo, load_datasets
from .networks import build_model
from .spec import JobRef, JobSpec, TrainingSpec

EpochCallback = Callable[[dict[str, Any]], None]
ProgressCallback = Callable[[int, float], None]

CHECKPOINT, METRICS, MODEL, MODEL_INT = "checkpoint.pt", "metrics.json", "model.pt", "model-int.pt"


class Cancelled(Exception):
    """The job was cancelled between two batches; the finished epochs are kept."""


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32. auto = bf16 (fp16 on older GPUs) on CUDA."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("training.precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def loader(
    dataset: Dataset, batch_size: int, device: torch.device, shuffle: bool, seed: int = 0
) -> DataLoader:
    """CPU: load in the training process (2 cores are better spent on compute). CUDA: worker
    processes started by forkserver, never forked from a process that already ran torch."""
    extra: dict[str, Any] = {}
    if device.type == "cuda":
        extra = dict(
            num_workers=8,
            multiprocessing_context="forkserver",
            pin_memory=True,
            persistent_workers=True,
        )
    g = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size, shuffle=shuffle, generator=g, **extra)


def _correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == y[:, None]).any(dim=1).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module, data: DataLoader, device: torch.device, amp: torch.dtype | None = None
) -> dict[str, float]:
    """Test loss and top-1/top-5 accuracy in percent."""
    model.eval()
    loss = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in data:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
        loss += F.cross_entropy(logits.float(), y, reduction="sum")
        top1 += _correct(logits, y, 1)
        top5 += _correct(logits, y, 5)
        n += len(y)
    return {"loss": loss.item() / n, "top1": 100 * top1.item() / n, "top5": 100 * top5.item() / n}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on everything but the step sizes (decay would shrink them towards zero)."""
    steps = [p for n, p in model.named_parameters() if n.endswith("_quantizer.step")]
    ids = {id(p) for p in steps}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "weight_decay": weight_decay}, {"params": steps, "weight_decay": 0.0}]


def build(
    spec: JobSpec, info: DatasetInfo, device: torch.device, load_init: bool = True
) -> tuple[nn.Module, bool]:
    """The network the spec names, its init loaded, before quantization; and whether it had one."""
    init = spec.model.init
    if isinstance(init, JobRef):
        raise ValueError(
            f"model.init {{job: {init.job}}} names a job of the service; locally give the path of "
            "that job's model.pt"
        )
    model = build_model(
        spec.model.arch,
        info.num_classes,
        info.in_channels,
        pretrained=load_init and init == "pretrained",
    )
    if load_init and init and init != "pretrained":
        checkpoint.load_init_weights(model, init)
    return model.to(device), init is not None


def quantize(model: nn.Module, spec: JobSpec) -> nn.Module:
    q = spec.quantization
    if not q.enabled:
        return model
    return quantize_model(
        model,
        q.weight,
        q.activation,
        q.first_last,
        per_channel=q.granularity == "per_channel",
        inplace=True,
    )


def _batches(data: DataLoader, bar: bool, epoch: int) -> Iterator:
    return iter(tqdm(data, desc=f"epoch {epoch}", leave=False, disable=not bar, unit="batch"))


def train_epoch(
    model: nn.Module,
    data: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    amp: torch.dtype | None,
    scaler: torch.amp.GradScaler,
    epoch: int,
    on_progress: ProgressCallback | None,
    should_cancel: Callable[[], bool] | None,
    bar: bool,
) -> dict[str, float]:
    model.train()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n, batches = 0, len(data)
    for i, (x, y) in enumerate(_batches(data, bar, epoch)):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled during epoch {epoch}")
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.detach() * len(y)
        correct += _correct(logits.detach(), y, 1)
        n += len(y)
        if on_progress is not None:
            on_progress(epoch, (i + 1) / batches)
    if not math.isfinite(total_loss.item()):
        raise RuntimeError(f"training diverged: the loss is {total_loss.item()} in epoch {epoch}")
    return {"loss": total_loss.item() / n, "top1": 100 * correct.item() / n, "images": n}


def _scheduler(
    optimizer: torch.optim.Optimizer, t: TrainingSpec
) -> torch.optim.lr_scheduler.LRScheduler:
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def summarise(epochs: list[dict[str, Any]], init: dict[str, float] | None) -> dict[str, Any]:
    """Final and best test accuracy, and the drop against the starting model when there is one."""
    last = epochs[-1]
    best = max(epochs, key=lambda e: e["test_top1"])
    result = {
        "final_top1": last["test_top1"],
        "final_top5": last["test_top5"],
        "best_top1": best["test_top1"],
        "best_top5": best["test_top5"],
        "best_epoch": best["epoch"],
        "epochs": len(epochs),
        "init_top1": None,
        "init_top5": None,
        "drop_top1": None,
        "drop_top5": None,
    }
    if init is not None:
        result |= {
            "init_top1": init["top1"],
            "init_top5": init["top5"],
            "drop_top1": init["top1"] - last["test_top1"],
            "drop_top5": init["top5"] - last["test_top5"],
        }
    return result


def run(
    spec: JobSpec,
    out_dir: str | Path,
    *,
    on_epoch: EpochCallback | None = None,
    on_progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = False,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Run a job to its last epoch and return its result (see ``summarise``).

    With ``resume``, continue from ``out_dir/checkpoint.pt`` when it exists. Raises Cancelled
    when ``should_cancel()`` turns true, ValueError / FileNotFoundError for bad input.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = spec.training
    device = pick_device(t.device)
    amp = autocast_dtype(t.precision, device)
    torch.manual_seed(t.seed)
    train_set, test_set, info = load_datasets(spec.dataset, t.seed)
    test_data = loader(test_set, t.batch_size, device, shuffle=False)

    state = checkpoint.load(out / CHECKPOINT) if resume and (out / CHECKPOINT).exists() else None
    if state is not None and state["spec"] != spec.model_dump(mode="json"):
        raise ValueError(f"{out / CHECKPOINT} belongs to a different job spec; use a new folder")

    model, has_init = build(spec, info, device, load_init=state is None)
    init_metrics = None
    if state is not None:
        init_metrics = state["init_metrics"]
    elif has_init:  # the starting model's accuracy, so the result can state the drop
        init_metrics = evaluate(model, test_data, device, amp)
    model = quantize(model, spec)
    optimizer = torch.optim.SGD(param_groups(model, t.weight_decay), lr=t.lr, momentum=t.momentum)
    scheduler = _scheduler(optimizer, t)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    epochs: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        epochs = state["epochs"]

    info_dict = {
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "image_size": info.image_size,
    }
    for epoch in range(len(epochs) + 1, t.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        torch.manual_seed(t.seed * 100_003 + epoch)  # augmentation: the same after a resume
        train_data = loader(train_set, t.batch_size, device, shuffle=True, seed=t.seed + epoch)
        train = train_epoch(
            model,
            train_data,
            optimizer,
            device,
            amp,
            scaler,
            epoch,
            on_progress,
            should_cancel,
            progress_bar,
        )
        train_seconds = time.perf_counter() - start
        scheduler.step()
        test = evaluate(model, test_data, device, amp)
        metrics = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "train_top1": train["top1"],
            "test_loss": test["loss"],
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "lr": lr,
            "seconds": time.perf_counter() - start,
            "images_per_second": train["images"] / train_seconds,
        }
        epochs.append(metrics)
        checkpoint.save_atomic(
            {
                "spec": spec.model_dump(mode="json"),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epochs": epochs,
                "init_metrics": init_metrics,
            },
            out / CHECKPOINT,
        )
        _write_metrics(out, epochs, None)
        if on_epoch is not None:
            on_epoch(metrics)

    result = summarise(epochs, init_metrics)
    checkpoint.save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, out / MODEL)
    if spec.quantization.enabled:
        export.save_integer(model, spec, info_dict, out / MODEL_INT)
    _write_metrics(out, epochs, result)
    return result


def _write_metrics(out: Path, epochs: list[dict[str, Any]], result: dict | None) -> None:
    tmp = out / f".{METRICS}.tmp"
    tmp.write_text(json.dumps({"epochs": epochs, "result": result}, indent=2))
    tmp.replace(out / METRICS)
