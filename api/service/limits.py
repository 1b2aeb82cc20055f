"""What one job may ask of this service, beyond what lsq.spec itself bounds.

Caps are settings (LSQ_MAX_EPOCHS, ...); files are confined: a dataset folder or a `model.init`
checkpoint must lie under LSQ_DATA_ROOTS, after `..` and symlinks are resolved, and never in
the artifacts folder (another job's files are reached only as `model.init: {job: ID}`).
"""

from __future__ import annotations

import os
from pathlib import Path

from api.service.config import Settings
from api.service.errors import InvalidField
from api.service.job_spec import named_models
from lsq.archs import ONNX_ARCH
from lsq.cost import Tally, training_bytes
from lsq.spec import DEFAULT_ROOTS, JobSpec


def check_job(spec: JobSpec, settings: Settings) -> None:
    """Raise InvalidField for the first cap the spec exceeds or path it may not read."""
    t, d = spec.training, spec.dataset
    caps = [
        ("training.epochs", t.epochs, settings.max_epochs, "LSQ_MAX_EPOCHS"),
        ("training.batch_size", t.batch_size, settings.max_batch_size, "LSQ_MAX_BATCH_SIZE"),
        ("training.devices", t.devices, settings.max_devices, "LSQ_MAX_DEVICES"),
        ("dataset.train_size", d.train_size, settings.max_subset, "LSQ_MAX_SUBSET"),
        ("dataset.test_size", d.test_size, settings.max_subset, "LSQ_MAX_SUBSET"),
    ]
    for field, value, cap, name in caps:
        if value is not None and value > cap:
            raise InvalidField(field, f"{value} is above this service's limit of {cap} ({name})")
    check_batch(spec, settings)
    check_files(spec, settings)


def check_batch(
    spec: JobSpec, settings: Settings, one_host: bool = False, network: Tally | None = None
) -> None:
    """A training batch and the network must fit LSQ_MAX_BATCH_BYTES on each device (on a CPU,
    `one_host`, the whole batch on the host, and at most half the host's memory: a worker
    checks again once it knows which it has). An uploaded ONNX model is checked by the worker
    alone, with its measured cost (`network`)."""
    if spec.model.arch == ONNX_ARCH and network is None:
        return
    cap, name = settings.max_batch_bytes, "LSQ_MAX_BATCH_BYTES"
    if one_host and (half := host_memory() // 2) < cap:
        cap, name = half, "LSQ_MAX_BATCH_BYTES, or half of this CPU worker's memory"
    if (held := training_bytes(spec, one_host, network)) > cap:
        where = "on this CPU worker's host" if one_host else "on each device"
        raise InvalidField(
            "training.batch_size",
            f"training would hold about {held / 2**30:,.1f} GiB {where} (the network, its "
            f"gradients and one batch's activations), above {cap / 2**30:,.1f} GiB ({name}): "
            "a smaller batch_size or network"
            + ("" if one_host else ", or more GPUs (training.devices)"),
        )


def host_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_files(spec: JobSpec, settings: Settings) -> None:
    """The dataset folder, a model.init path, a teacher's and an ONNX model's must be under
    LSQ_DATA_ROOTS."""
    folder = spec.dataset.root or DEFAULT_ROOTS.get(spec.dataset.name)
    if folder is not None:
        check_file("dataset.root", folder, settings)
    for field, path in named_models(spec).items():
        if isinstance(path, str) and path != "pretrained":
            check_file(field, path, settings)
    if spec.model.onnx is not None:
        check_file("model.onnx", spec.model.onnx, settings)


def check_file(field: str, path: str, settings: Settings) -> None:
    """`path` (as given: no `~`) must resolve under LSQ_DATA_ROOTS."""
    # One message whatever the reason, so a refusal never says whether a file exists.
    refusal = InvalidField(
        field,
        "must be an absolute path under one of this service's data folders "
        f"({':'.join(map(str, settings.roots)) or 'none'}; LSQ_DATA_ROOTS)",
    )
    if not Path(path).is_absolute():
        raise refusal
    try:
        real = Path(path).resolve()  # `..` and every symlink on the way, existing or not
    except (OSError, RuntimeError):  # a symlink loop, say
        raise refusal from None
    artifacts = settings.artifacts.resolve()
    if real.is_relative_to(artifacts) or not any(real.is_relative_to(r) for r in settings.roots):
        raise refusal
