"""Small jobs on the synthetic dataset, shared by the core tests."""

from lsq.spec import JobSpec

# the reference's quan_lr = no (first conv and last linear in float) and = yes
TERNARY = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3], "first_last": "float"}
TERNARY_ALL = {**TERNARY, "first_last": "same"}


def synthetic_spec(
    name="syn", epochs=2, init=None, quant=None, sensitivity=None, **training
) -> JobSpec:
    """A small job on the synthetic dataset (a few seconds on a CPU)."""
    lr = 0.05 if init is None else 0.01
    return JobSpec.model_validate(
        {
            "name": name,
            "dataset": {"name": "synthetic", "train_size": 512, "test_size": 256},
            "model": {"arch": "resnet20", "init": init},
            "quantization": quant or {},
            "training": {"epochs": epochs, "batch_size": 64, "lr": lr, "seed": 0} | training,
        }
        | ({"sensitivity": sensitivity} if sensitivity is not None else {})
    )
