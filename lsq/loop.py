"""The train/evaluate loop: one epoch of training, then an evaluation on the test set."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from . import distributed, health
from .batches import Batches, MemoryBatches
from .compiled import StepCompiler
from .data import in_memory
from .device import autocast
from .distributed import SINGLE, Rank
from .evaluation import Cancelled, evaluate, hits
from .metrics import EpochMetrics, QuantizerHealth
from .quantizer import LsqQuantizer, step_parameters
from .spec import JobSpec, TrainingSpec

# Data-parallel ranks agree on cancellation every this many batches (it is a collective).
CANCEL_EVERY = 10


@dataclass
class Hooks:
    """What the caller hears from the loop (rank 0 only)."""

    on_epoch: Callable[[EpochMetrics], None] | None = None
    on_progress: Callable[[int, float], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    progress_bar: bool = False


def loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    shuffle: bool,
    seed: int = 0,
    rank: Rank = SINGLE,
) -> Batches:
    """Batches of `dataset`: straight from memory on its device when it is held there
    (lsq.batches), else a DataLoader. CPU: loading in the training process (2 cores are
    better spent on compute). CUDA: worker processes started by forkserver, never forked from
    a process that already ran torch, pinned memory, kept across epochs."""
    held = in_memory(dataset)
    if held is not None:
        return MemoryBatches(*held, batch_size, shuffle, seed, rank)
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


def eval_batch_size(batch_size: int) -> int:
    """Evaluation keeps no activations for a backward pass: 4x the training batch, to 1024."""
    return max(batch_size, min(4 * batch_size, 1024))


class Stopwatch:
    """Time spent inside ``with stopwatch:`` blocks: CUDA events on a GPU (read once, by
    ``take``, so the blocks never wait for the device), the wall clock on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds, self.events = 0.0, []

    def __enter__(self) -> None:
        if self.cuda:
            self.events.append(torch.cuda.Event(enable_timing=True))
            self.events[-1].record()
        else:
            self.seconds -= time.perf_counter()

    def __exit__(self, *_: object) -> None:
        if self.cuda:
            self.events.append(torch.cuda.Event(enable_timing=True))
            self.events[-1].record()
        else:
            self.seconds += time.perf_counter()

    def take(self) -> float:
        """The seconds since the last take."""
        if self.events:
            self.events[-1].synchronize()
            pairs = zip(self.events[::2], self.events[1::2], strict=True)
            self.seconds += sum(a.elapsed_time(b) for a, b in pairs) / 1000
        seconds, self.seconds, self.events = self.seconds, 0.0, []
        return seconds


def param_groups(model: nn.Module, t: TrainingSpec) -> list[dict[str, Any]]:
    """Weight decay on everything but the step sizes (decay would shrink them towards zero);
    the steps learn at their own rate. The weights' group comes first: it sets the logged lr."""
    steps = step_parameters(model)
    ids = {id(p) for p in steps}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        {"params": rest, "weight_decay": t.weight_decay},
        {"params": steps, "weight_decay": 0.0, "lr": t.lr * t.step_lr_scale},
    ]


def make_scheduler(
    optimizer: torch.optim.Optimizer, t: TrainingSpec
) -> torch.optim.lr_scheduler.LRScheduler:
    """The once-per-epoch schedule; cosine_batch keeps it constant and anneals per batch."""
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def anneal(optimizer: torch.optim.Optimizer, progress: float) -> None:
    """Every group's lr at `progress` (0 to 1) of the whole training along a cosine from its
    initial lr to 0. A function of the batch alone, so a resumed run anneals the same."""
    factor = 0.5 * (1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def set_lrs(optimizer: torch.optim.Optimizer, lrs: list[float]) -> None:
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


def warmup_factor(warmup_epochs: float, step: int, batches: int) -> float:
    """The linear warm-up's share of the lr at optimizer step `step` (1-based), with `batches`
    steps an epoch: step / warm-up steps until it reaches 1."""
    if not warmup_epochs:
        return 1.0
    return min(1.0, step / (warmup_epochs * batches))


@torch.no_grad()
def init_activation_steps(model: nn.Module, x: torch.Tensor) -> None:
    """Initialise every activation step from batch x, leaving batch-norm statistics untouched."""
    quantizers = [m for m in model.modules() if isinstance(m, LsqQuantizer)]
    if not any(q.needs_init for q in quantizers):
        return
    quantizer_state = ("initialized", "signed")  # what this pass sets: kept
    saved = {k: v.clone() for k, v in model.named_buffers() if not k.endswith(quantizer_state)}
    model.train()(x)
    for k, v in model.named_buffers():
        if k in saved:
            v.copy_(saved[k])


@torch.no_grad()
def reestimate_batch_norm(
    model: nn.Module, data: Batches, batches: int, device: torch.device, amp: torch.dtype | None
) -> None:
    """Batch-norm running statistics recomputed as the plain average over `batches` training
    batches of the network as it now is: the running averages of an epoch mix statistics of
    weights that kept moving between quantization levels (Nagel et al. 2022)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    for (x, _), _ in zip(data, range(batches), strict=False):
        with autocast(device, amp):
            model(x.to(device, non_blocking=True))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def init_steps(model: nn.Module, x: torch.Tensor, amp: torch.dtype | None = None) -> None:
    """Activation steps from the first batch; under DDP, every replica then takes rank 0's."""
    with autocast(x.device, amp):
        init_activation_steps(model, x)
    distributed.broadcast_steps(model)


@dataclass
class Trainer:
    """One rank's training state for a job: the model, its optimizer and schedule."""

    spec: JobSpec
    rank: Rank
    hooks: Hooks
    device: torch.device
    amp: torch.dtype | None
    model: nn.Module  # the plain module (DDP wraps it for the forward in training)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ddp: DistributedDataParallel | None = None
    compiler: StepCompiler | None = None
    teacher: nn.Module | None = None  # distillation: a float model in eval mode
    teacher_clock: Stopwatch | None = None

    @classmethod
    def create(
        cls,
        spec: JobSpec,
        model: nn.Module,
        device: torch.device,
        amp: torch.dtype | None,
        rank: Rank,
        hooks: Hooks,
        teacher: nn.Module | None = None,
    ) -> Trainer:
        t = spec.training
        groups = param_groups(model, t)
        optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        scheduler = make_scheduler(optimizer, t)
        clock = Stopwatch(device) if teacher is not None else None
        return cls(
            spec, rank, hooks, device, amp, model, optimizer, scheduler, scaler,
            teacher=teacher, teacher_clock=clock,
        )  # fmt: skip

    STATEFUL = ("model", "optimizer", "scheduler", "scaler")  # what a checkpoint restores

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).state_dict() for k in self.STATEFUL}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.STATEFUL:
            getattr(self, k).load_state_dict(state[k])

    def epoch(self, train_set: Dataset, test_data: Batches, epoch: int) -> EpochMetrics | None:
        """Train one epoch and evaluate; the metrics on rank 0 (which evaluates), else None."""
        t = self.spec.training
        start = time.perf_counter()
        self._anneal(epoch, 0.0)  # so the lr logged is the epoch's first
        lr = self.optimizer.param_groups[0]["lr"]
        # Shuffle and augmentation seeded by (seed, epoch): the same after a resume. The ranks
        # share the shuffle's seed (each takes its part of one order); the DataLoader path's
        # per-sample augmentation draws from torch's RNG, seeded per rank.
        mixed = (t.seed * 100_003 + epoch) * 1_009
        torch.manual_seed(mixed + self.rank.rank)
        data = loader(train_set, t.batch_size, self.device, True, mixed, self.rank)
        if isinstance(getattr(data, "sampler", None), DistributedSampler):
            data.sampler.set_epoch(epoch)
        loss, top1, n, compile_seconds = self._train(data, epoch)
        train_seconds = time.perf_counter() - start - compile_seconds
        self.scheduler.step()
        if not self.rank.main:
            return None
        if t.bn_reestimate:
            data = loader(train_set, t.batch_size, self.device, True, mixed + 1)
            reestimate_batch_norm(self.model, data, t.bn_reestimate, self.device, self.amp)
        eval_start = time.perf_counter()
        test = evaluate(self.model, test_data, self.device, self.amp, self.hooks.should_cancel)
        end = time.perf_counter()
        quantizers = self._quantizer_health(test_data) if self.spec.quantization.enabled else None
        return EpochMetrics(
            epoch=epoch,
            train_loss=loss,
            train_top1=top1,
            test_loss=test.loss,
            test_top1=test.top1,
            test_top5=test.top5,
            lr=lr,
            seconds=end - start,
            images_per_second=n / train_seconds,
            eval_seconds=end - eval_start,
            compile_seconds=compile_seconds or None,
            teacher_seconds=self.teacher_clock.take() if self.teacher_clock else None,
            quantizers=quantizers,
        )

    def _anneal(self, epoch: int, fraction: float) -> None:
        """cosine_batch: the lr at `fraction` of `epoch` (the other schedules step per epoch)."""
        t = self.spec.training
        if t.scheduler == "cosine_batch":
            anneal(self.optimizer, (epoch - 1 + fraction) / t.epochs)

    def _set_lr(self, epoch: int, i: int, batches: int, epoch_lrs: list[float]) -> None:
        """Batch i's lr: the schedule's (the epoch's, or annealed per batch for cosine_batch),
        times the warm-up's share while it lasts."""
        set_lrs(self.optimizer, epoch_lrs)
        self._anneal(epoch, i / batches)
        warmup = self.spec.training.warmup_epochs
        factor = warmup_factor(warmup, (epoch - 1) * batches + i + 1, batches)
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def _quantizer_health(self, test_data: Batches) -> list[QuantizerHealth]:
        """The quantizers' health on the first test batch (lsq.health)."""
        x, _ = next(iter(test_data))
        with autocast(self.device, self.amp):
            return health.measure(self.model, x.to(self.device))

    def _train(self, data: Batches, epoch: int) -> tuple[float, float, int, float]:
        """One pass over `data`: mean loss, top-1 in percent, the images seen (all ranks) and
        the seconds spent compiling."""
        compiler = self._compiler(len(data), epoch)
        compiler.eager.train()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = torch.zeros((), device=self.device, dtype=torch.long)
        # None: tqdm draws only on a terminal (a log file gets no wall of \r updates)
        bar = None if self.hooks.progress_bar and self.rank.main else True
        epoch_lrs = [group["lr"] for group in self.optimizer.param_groups]
        for i, (x, y) in enumerate(tqdm(data, f"epoch {epoch}", leave=False, disable=bar)):
            if self._cancelled(i):
                raise Cancelled(f"cancelled during epoch {epoch}")
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if i == 0 and epoch == 1:
                init_steps(self.model, x, self.amp)
            self._set_lr(epoch, i, len(data), epoch_lrs)
            full = len(y) == data.batch_size
            logits, loss = compiler.step(lambda m: self._step(m, x, y), x, full)  # noqa: B023
            total += loss.detach() * len(y)
            correct += hits(logits.detach(), y, 1)
            n += len(y)
            if self.hooks.on_progress is not None:
                self.hooks.on_progress(epoch, (i + 1) / len(data))
        set_lrs(self.optimizer, epoch_lrs)  # the scheduler steps from the epoch's own lr
        distributed.all_sum(total, correct, n)
        if not math.isfinite(total.item()):
            raise RuntimeError(f"training diverged: the loss is {total.item()} in epoch {epoch}")
        count = n.item()
        return total.item() / count, 100 * correct.item() / count, count, compiler.take_seconds()

    def _step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any]:
        with autocast(self.device, self.amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if self.teacher is not None:
                loss = self._distilled(loss, logits, x)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logits, loss

    def _distilled(self, loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> Any:
        """alpha T^2 KL(teacher || student) at temperature T, plus (1 - alpha) the labels' loss
        (Hinton et al. 2015); the teacher sees the same augmented batch."""
        d = self.spec.training.distill
        assert d is not None and self.teacher is not None and self.teacher_clock is not None
        with torch.no_grad(), self.teacher_clock:
            target = self.teacher(x).float()
        t = d.temperature
        student, teacher = F.log_softmax(logits.float() / t, 1), F.log_softmax(target / t, 1)
        kd = F.kl_div(student, teacher, reduction="batchmean", log_target=True) * t * t
        return d.alpha * kd + (1 - d.alpha) * loss

    def _compiler(self, batches: int, epoch: int) -> StepCompiler:
        """The step compiler, made on the first epoch this process trains (after a resume too)."""
        if self.compiler is None:
            left = batches * (self.spec.training.epochs - epoch + 1)
            module = self._forward_module()
            choice = self.spec.training.compile
            if self.rank.distributed and choice == "auto":
                choice = "off"  # each rank would time and decide alone: compile only when asked
            self.compiler = StepCompiler(choice, module, left, self.device, self.amp)
        return self.compiler

    def _forward_module(self) -> nn.Module:
        if self.rank.distributed and self.ddp is None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        return self.ddp or self.model

    def _cancelled(self, i: int) -> bool:
        if self.rank.distributed and i % CANCEL_EVERY:
            return False
        local = self.hooks.should_cancel is not None and self.hooks.should_cancel()
        return distributed.any_rank(local, self.device)
