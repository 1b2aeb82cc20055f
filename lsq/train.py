"""Run one job: build the network, quantize it, train it epoch by epoch, write its files.

``run(spec, out_dir)`` is the whole job. The loop itself is in ``lsq.loop``, the run folder
(checkpoint every epoch, metrics.json, final files) in ``lsq.outputs``. With
``training.devices: N > 1`` the job runs data-parallel in N processes; rank 0 writes every file.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from . import checkpoint, distributed, export, outputs, sensitivity
from .archs import layer_names
from .batches import Batches
from .board import Board
from .convert import quantize_as_specified
from .data import DatasetInfo, load_datasets, on_device
from .device import autocast_dtype, pick_device
from .distributed import SINGLE, Rank
from .evaluation import Cancelled, confusion_matrix, evaluate, stop_if_cancelled
from .graph import trace
from .loop import Hooks, Trainer, eval_batch_size, init_steps, loader
from .metrics import Accuracy, ClassReport, DataSummary, EpochMetrics, RunMetrics, RunResult
from .networks import build_network
from .spec import JobSpec

PLOT_EVERY_SECONDS = 30  # redraw the curves of a running job at most this often
MAX_REPORTED_CLASSES = 1000  # a confusion matrix of 1000 x 1000 counts, 8 MB


def run(
    spec: JobSpec,
    out_dir: str | Path,
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_progress: Callable[[int, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = False,
    progress_bar: bool = False,
) -> RunResult:
    """Run a job to its last epoch and return its result.

    ``on_epoch(metrics)`` after every epoch; ``on_progress(epoch, fraction)`` between batches,
    ``should_cancel()`` between batches of training and of evaluation, and before each final
    file (a cancelled run returns no result). With ``resume``, continue from
    ``out_dir/checkpoint.pt`` when it exists. Raises Cancelled when ``should_cancel()`` turns
    true, ValueError or FileNotFoundError for bad input.
    """
    hooks, out = Hooks(on_epoch, on_progress, should_cancel, progress_bar), Path(out_dir)
    world = spec.training.devices
    if world == 1:
        return _train(spec, out, resume, hooks, SINGLE)
    device_type = pick_device(spec.training.device).type
    args = (spec.model_dump_json(), str(out), resume)
    return distributed.launch(
        world, device_type, _rank_main, args, lambda rank: _train(spec, out, resume, hooks, rank)
    )


def _rank_main(
    index: int, world: int, port: int, device_type: str, spec_json: str, out: str, resume: bool
) -> None:
    """Ranks 1..N-1 of a data-parallel job (started with spawn)."""
    rank = distributed.join(index, world, port, device_type)
    try:
        _train(JobSpec.model_validate_json(spec_json), Path(out), resume, Hooks(), rank)
    except Cancelled:
        pass
    finally:
        distributed.close()


def _train(spec: JobSpec, out: Path, resume: bool, hooks: Hooks, rank: Rank) -> RunResult | None:
    t = spec.training
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(t.device, rank)
    amp = autocast_dtype(t.precision, device)
    torch.manual_seed(t.seed)
    train_set, test_set, info = load_datasets(spec.dataset, t.seed)
    train_set, test_set = on_device(train_set, device), on_device(test_set, device)
    test_data = loader(test_set, eval_batch_size(t.batch_size), device, shuffle=False)
    saved = outputs.load_progress(out, spec) if resume else None

    model = build(spec, info, device, init=spec.model.init if saved is None else None)
    start = saved.start if saved else None
    trained = spec.model.init is not None or spec.model.onnx is not None
    if saved is None and trained and rank.main:
        # so the result states the drop
        start = evaluate(model, test_data, device, amp, hooks.should_cancel)
    if layer_names(spec.model.arch) is None:  # timm's or a plugin's: known now it is built
        spec.check_layers(trace(model, info.example(device)).order)
    model = quantize_as_specified(model, spec.quantization, info.example(device))
    if spec.sensitivity is not None:  # validated: model.init is given, one device
        assert start is not None
        return _probe(out, spec, model, (train_set, test_data), device, amp, start, hooks)
    teacher = build_teacher(spec, info, device) if t.distill else None
    trainer = Trainer.create(spec, model, device, amp, rank, hooks, teacher)
    epochs: list[EpochMetrics] = []
    if saved is not None:
        trainer.load_state_dict(saved.trainer)
        epochs = saved.epochs

    plotted, board = 0.0, Board(out)
    for epoch in range(len(epochs) + 1, t.epochs + 1):
        metrics = trainer.epoch(train_set, test_data, epoch)
        if metrics is not None:  # rank 0 evaluates and writes; the others wait
            epochs.append(metrics)
            outputs.save_progress(out, spec, outputs.Progress(trainer.state_dict(), epochs, start))
            board.epoch(metrics)
            if time.monotonic() - plotted > PLOT_EVERY_SECONDS and epoch < t.epochs:
                outputs.save_plots(out, spec, epochs)  # live curves; the last come with the end
                plotted = time.monotonic()
            if hooks.on_epoch is not None:
                hooks.on_epoch(metrics)
        distributed.barrier()
    board.close()
    if not rank.main:
        return None
    about = _about_the_data(model, (test_data, device, amp), info, hooks)
    return _finish(out, spec, model, info, epochs, start, hooks, about)


def _about_the_data(
    model: nn.Module,
    evaluation: tuple[Batches, torch.device, torch.dtype | None],
    info: DatasetInfo,
    hooks: Hooks,
) -> dict[str, Any]:
    """The result's per-class accuracy and confusions (from one more pass over the test set;
    up to MAX_REPORTED_CLASSES) and the data's normalisation and skipped files."""
    stop_if_cancelled(hooks.should_cancel, "the final files")  # they start with this pass
    test_data, device, amp = evaluation
    names = list(info.classes) or [str(c) for c in range(info.num_classes)]
    about: dict[str, Any] = {}
    if info.num_classes <= MAX_REPORTED_CLASSES:
        counts = confusion_matrix(
            model, test_data, device, info.num_classes, amp, hooks.should_cancel
        )
        about["per_class"] = ClassReport.of(counts, names)
    if info.mean:
        about["data"] = DataSummary(mean=info.mean, std=info.std, skipped_images=info.skipped)
    return about


def _finish(
    out: Path,
    spec: JobSpec,
    model: nn.Module,
    info: DatasetInfo,
    epochs: list[EpochMetrics],
    start: Accuracy | None,
    hooks: Hooks,
    about: dict[str, Any],
) -> RunResult:
    """The result and the final files, the cancel flag asked before each (exports are slow)."""
    before_each = functools.partial(stop_if_cancelled, hooks.should_cancel, "the final files")
    before_each()
    result = RunResult.of(epochs, start).model_copy(update=about)
    if spec.quantization.enabled:
        size = export.check(export.integer_state(model))
        if size.violations:  # the codes come from a clamp: this would be a bug, say so loudly
            raise RuntimeError(f"integer export out of its level sets: {size.violations}")
        result = result.model_copy(
            update={"model_bits": size.model_bits, "compression": size.compression}
        )
    metrics = RunMetrics(epochs=epochs, result=result)
    outputs.save_final(out, spec, model, info, metrics, before_each)
    return result


def _probe(
    out: Path,
    spec: JobSpec,
    model: nn.Module,
    data: tuple[Dataset, Batches],
    device: torch.device,
    amp: torch.dtype | None,
    start: Accuracy,
    hooks: Hooks,
) -> RunResult:
    """A sensitivity job (lsq.sensitivity): steps set from one training batch, the whole network
    evaluated, then one evaluation per probed layer; no training."""
    assert spec.sensitivity is not None
    (train_set, test_data), t = data, spec.training
    x, _ = next(iter(loader(train_set, t.batch_size, device, True, t.seed)))
    init_steps(model, x.to(device), amp)
    measure = functools.partial(evaluate, model, test_data, device, amp, hooks.should_cancel)
    names = spec.sensitivity.probed(spec.model.arch, spec.quantization)
    shown = None if hooks.progress_bar else True  # None: on a terminal only
    bar = tqdm(total=len(names), desc="probes", leave=False, disable=shown)

    def after_each(i: int) -> None:
        bar.update()
        if hooks.on_progress is not None:
            hooks.on_progress(1, (i + 1) / len(names))
        if hooks.should_cancel is not None and hooks.should_cancel():
            raise Cancelled(f"cancelled after {i + 1} of {len(names)} probes")

    with bar:
        probes = sensitivity.probe(model, names, spec.sensitivity, measure, start, after_each)
    result = RunResult.of_probes(measure(), start, probes)
    stop_if_cancelled(hooks.should_cancel, "the final files")
    outputs.save_sensitivity(out, spec, result)
    return result


def build_teacher(spec: JobSpec, info: DatasetInfo, device: torch.device) -> nn.Module:
    """The distillation teacher: the spec's network in float, its weights from
    training.distill.teacher, in eval mode and frozen."""
    assert spec.training.distill is not None
    teacher = build(spec, info, device, init=spec.training.distill.teacher)
    return teacher.eval().requires_grad_(False)


def build(
    spec: JobSpec, info: DatasetInfo, device: torch.device, init: str | None = None
) -> nn.Module:
    """The network the spec names, in float, with the weights of `init` ('pretrained', a
    model.pt path, or None for a random init)."""
    pretrained = init == "pretrained"
    shape = (info.num_classes, info.in_channels)
    model = build_network(spec.model, *shape, info.image_size, pretrained)
    if init and init != "pretrained":
        checkpoint.load_init_weights(model, init)
    return model.to(device)
