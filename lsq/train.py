"""Train and evaluate one job: full precision, or quantized from a full-precision start.

``run(spec, out_dir)`` is the whole job. It writes, in out_dir, ``checkpoint.pt`` after every
epoch (enough to resume and end with the same weights), ``metrics.json``, and at the end
``model.pt`` (the float state dict, usable as another job's ``model.init``), ``accuracy.png``
(the accuracy curves) and, for a quantized job, ``model-int.pt`` (the integer export).
With ``training.devices: N > 1`` the job runs data-parallel (DistributedDataParallel) in N
processes; rank 0 writes every file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from . import checkpoint, distributed, export, plot
from .convert import quantize_model
from .data import DatasetInfo, load_datasets
from .distributed import SINGLE, Rank
from .files import CHECKPOINT, CURVE, METRICS, MODEL, MODEL_INT
from .networks import build_model
from .quantizer import LsqQuantizer, step_parameters
from .spec import JobRef, JobSpec, TrainingSpec

# Data-parallel ranks agree on cancellation every this many batches (it is a collective).
CANCEL_EVERY = 10


class Cancelled(Exception):
    """The job was cancelled between two batches; the finished epochs are kept."""


@dataclass
class Hooks:
    """What the caller hears from the loop (rank 0 only)."""

    on_epoch: Callable[[dict[str, Any]], None] | None = None
    on_progress: Callable[[int, float], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    progress_bar: bool = False


def pick_device(choice: str, rank: Rank = SINGLE) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if rank.world > torch.cuda.device_count():
        raise RuntimeError(
            f"training.devices is {rank.world} but this worker sees "
            f"{torch.cuda.device_count()} CUDA device(s) (CUDA_VISIBLE_DEVICES)"
        )
    torch.cuda.set_device(rank.rank)
    return torch.device("cuda", rank.rank)


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
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    shuffle: bool,
    seed: int = 0,
    rank: Rank = SINGLE,
) -> DataLoader:
    """CPU: load in the training process (2 cores are better spent on compute). CUDA: worker
    processes started by forkserver, never forked from a process that already ran torch."""
    extra: dict[str, Any] = {}
    if device.type == "cuda":
        extra = dict(
            num_workers=min(8, os.cpu_count() or 1),
            multiprocessing_context="forkserver",
            pin_memory=True,
            persistent_workers=True,
        )
    if rank.distributed and shuffle:
        sampler = DistributedSampler(dataset, rank.world, rank.rank, shuffle=True, seed=seed)
        return DataLoader(dataset, batch_size // rank.world, sampler=sampler, **extra)
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
    steps = step_parameters(model)
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


@torch.no_grad()
def init_activation_steps(model: nn.Module, x: torch.Tensor) -> None:
    """Initialise every activation step from batch x, leaving batch-norm statistics untouched."""
    quantizers = [m for m in model.modules() if isinstance(m, LsqQuantizer)]
    if not any(q.needs_init for q in quantizers):
        return
    saved = {k: v.clone() for k, v in model.named_buffers() if not k.endswith("initialized")}
    model.train()(x)
    for k, v in model.named_buffers():
        if k in saved:
            v.copy_(saved[k])


@dataclass
class _Loop:
    """One rank's training state for a job."""

    spec: JobSpec
    rank: Rank
    hooks: Hooks
    device: torch.device
    amp: torch.dtype | None
    model: nn.Module  # the plain module (DDP wraps it for the forward in training)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    replicas: dict[str, Any] | None = None
    ddp: DistributedDataParallel | None = None

    def cancelled(self, i: int) -> bool:
        if self.rank.distributed and i % CANCEL_EVERY:
            return False
        local = self.hooks.should_cancel is not None and self.hooks.should_cancel()
        return distributed.any_rank(local, self.device)

    def train_epoch(self, data: DataLoader, epoch: int) -> dict[str, float]:
        if self.rank.distributed and self.ddp is None:
            self.ddp = DistributedDataParallel(self.model, device_ids=self._device_ids())
        model = self.ddp or self.model
        model.train()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = torch.zeros((), device=self.device, dtype=torch.long)
        bar = self.hooks.progress_bar and self.rank.main
        batches = len(data)
        for i, (x, y) in enumerate(tqdm(data, f"epoch {epoch}", leave=False, disable=not bar)):
            if self.cancelled(i):
                raise Cancelled(f"cancelled during epoch {epoch}")
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if i == 0 and epoch == 1:
                self._init_steps(x)
            with _autocast(self.device, self.amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if i == 0 and epoch == 1 and self.rank.distributed:
                self.replicas["after_first_step"] = distributed.gather(self._steps())
            total += loss.detach() * len(y)
            correct += _correct(logits.detach(), y, 1)
            n += len(y)
            if self.hooks.on_progress is not None:
                self.hooks.on_progress(epoch, (i + 1) / batches)
        distributed.all_sum(total, correct, n)
        if not math.isfinite(total.item()):
            raise RuntimeError(f"training diverged: the loss is {total.item()} in epoch {epoch}")
        count = n.item()
        return {"loss": total.item() / count, "top1": 100 * correct.item() / count, "n": count}

    def _init_steps(self, x: torch.Tensor) -> None:
        """Activation steps from the first batch; under DDP, every replica takes rank 0's."""
        with _autocast(self.device, self.amp):
            init_activation_steps(self.model, x)
        if self.rank.distributed:
            self.replicas = {"local_init": distributed.gather(self._steps())}
            distributed.broadcast_steps(self.model)

    def _steps(self) -> torch.Tensor:
        return distributed.step_sizes(self.model).float()

    def _device_ids(self) -> list[int] | None:
        return [self.device.index] if self.device.type == "cuda" else None


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
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_progress: Callable[[int, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = False,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Run a job to its last epoch and return its result (see ``summarise``).

    ``on_epoch(metrics)`` after every epoch; ``on_progress(epoch, fraction)`` and
    ``should_cancel()`` between batches. With ``resume``, continue from ``out_dir/checkpoint.pt``
    when it exists. Raises Cancelled when ``should_cancel()`` turns true, ValueError or
    FileNotFoundError for bad input.
    """
    hooks = Hooks(on_epoch, on_progress, should_cancel, progress_bar)
    world = spec.training.devices
    if world == 1:
        return _train(spec, Path(out_dir), resume, hooks, SINGLE)
    device_type = pick_device(spec.training.device).type
    port = distributed.free_port()
    others = torch.multiprocessing.start_processes(
        _rank_main,
        args=(world, port, device_type, spec.model_dump_json(), str(out_dir), resume),
        nprocs=world - 1,
        join=False,
        start_method="spawn",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // world))  # the ranks share this host's cores
    try:
        distributed.init(Rank(0, world), port, device_type)
        result = _train(spec, Path(out_dir), resume, hooks, Rank(0, world))
    except BaseException:
        for p in others.processes:  # they would wait in a collective for rank 0 until timeout
            p.kill()
            p.join()
        raise
    finally:
        distributed.close()
        torch.set_num_threads(threads)
    while not others.join():
        pass
    return result


def _rank_main(
    index: int, world: int, port: int, device_type: str, spec_json: str, out: str, resume: bool
) -> None:
    """Ranks 1..N-1 of a data-parallel job (started with spawn)."""
    rank = Rank(index + 1, world)
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    distributed.init(rank, port, device_type)
    try:
        _train(JobSpec.model_validate_json(spec_json), Path(out), resume, Hooks(), rank)
    except Cancelled:
        pass
    finally:
        distributed.close()


def _train(spec: JobSpec, out: Path, resume: bool, hooks: Hooks, rank: Rank) -> dict[str, Any]:
    t = spec.training
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(t.device, rank)
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
    elif has_init and rank.main:  # the starting model's accuracy, so the result states the drop
        init_metrics = evaluate(model, test_data, device, amp)
    model = quantize(model, spec)
    optimizer = torch.optim.SGD(param_groups(model, t.weight_decay), lr=t.lr, momentum=t.momentum)
    scheduler = _scheduler(optimizer, t)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    epochs: list[dict[str, Any]] = []
    replicas = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        epochs, replicas = state["epochs"], state.get("replicas")
    loop = _Loop(spec, rank, hooks, device, amp, model, optimizer, scaler, replicas)

    for epoch in range(len(epochs) + 1, t.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        # shuffle and augmentation seeded by (seed, epoch, rank): the same after a resume
        torch.manual_seed((t.seed * 100_003 + epoch) * 1_009 + rank.rank)
        train_data = loader(train_set, t.batch_size, device, True, t.seed + epoch, rank)
        if isinstance(train_data.sampler, DistributedSampler):
            train_data.sampler.set_epoch(epoch)
        train = loop.train_epoch(train_data, epoch)
        train_seconds = time.perf_counter() - start
        scheduler.step()
        if rank.main:  # rank 0 evaluates the whole test set and writes; the others wait
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
                "images_per_second": train["n"] / train_seconds,
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
                    "replicas": loop.replicas,
                },
                out / CHECKPOINT,
            )
            _write_metrics(out, epochs, None)
            if hooks.on_epoch is not None:
                hooks.on_epoch(metrics)
        else:
            epochs.append({"epoch": epoch})
        distributed.barrier()

    if not rank.main:
        return {}
    result = summarise(epochs, init_metrics)
    checkpoint.save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, out / MODEL)
    if spec.quantization.enabled:
        export.save_integer(model, spec, dataclasses.asdict(info), out / MODEL_INT)
    plot.accuracy_curve(epochs, out / CURVE, spec.name)
    _write_metrics(out, epochs, result)
    return result


def _write_metrics(out: Path, epochs: list[dict[str, Any]], result: dict | None) -> None:
    with checkpoint.atomic_file(out / METRICS, "w") as f:
        json.dump({"epochs": epochs, "result": result}, f, indent=2)
