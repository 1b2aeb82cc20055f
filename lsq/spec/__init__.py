"""The job spec: the contract from the HTTP body to the training loop (torch-free).

- ``models``: the pydantic models, JobSpec and the parts it is made of;
- ``fields``: the field types and bounds they share (strict objects, bounded text, levels);
- ``versions``: SPEC_VERSION and the upgrades of documents stored at older versions;
- ``errors``: how validation errors are shown to users.

Import from here: ``from lsq.spec import JobSpec, describe_errors, upgrade_spec``.
"""

from ..levels import Init
from .dataset import DEFAULT_ROOTS, FASHION_MNIST_ROOT, DatasetSpec
from .errors import SpecError, describe_errors, field_name, format_errors
from .fields import (
    MAX_BATCH,
    MAX_BN_BATCHES,
    MAX_DEVICES,
    MAX_EPOCHS,
    MAX_LAYER_PATTERNS,
    MAX_PATH,
    MAX_SEED,
    MAX_SUBSET,
    MAX_SYNTHETIC_BYTES,
    Arch,
    DatasetName,
    FirstLast,
    Levels,
    Path_,
    Strict,
    bounded_text,
    printable,
)
from .models import (
    DistillOptions,
    DistillSpec,
    JobSpec,
    LayerLevels,
    ModelSpec,
    QuantizationSpec,
    SensitivitySpec,
    TrainingSpec,
    pretrained_cannot_teach,
)
from .versions import SPEC_VERSION, UPGRADES, upgrade_spec

__all__ = [
    # the models
    "JobSpec",
    "DatasetSpec",
    "ModelSpec",
    "QuantizationSpec",
    "LayerLevels",
    "TrainingSpec",
    "DistillOptions",
    "DistillSpec",
    "SensitivitySpec",
    "pretrained_cannot_teach",
    "DEFAULT_ROOTS",
    "FASHION_MNIST_ROOT",
    # their field types and bounds
    "Strict",
    "Arch",
    "DatasetName",
    "FirstLast",
    "Init",
    "Levels",
    "Path_",
    "bounded_text",
    "printable",
    "MAX_BATCH",
    "MAX_BN_BATCHES",
    "MAX_DEVICES",
    "MAX_EPOCHS",
    "MAX_LAYER_PATTERNS",
    "MAX_PATH",
    "MAX_SEED",
    "MAX_SUBSET",
    "MAX_SYNTHETIC_BYTES",
    # versions
    "SPEC_VERSION",
    "UPGRADES",
    "upgrade_spec",
    # errors
    "SpecError",
    "describe_errors",
    "field_name",
    "format_errors",
]
