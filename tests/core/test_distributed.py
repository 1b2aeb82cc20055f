"""training.devices: 2 on the CPU: two gloo processes, DistributedDataParallel."""

import json

import pytest
import torch

from lsq.spec import JobSpec
from lsq.train import Cancelled, run

FIELDS = {
    "epoch",
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top5",
    "lr",
    "seconds",
    "images_per_second",
}


def spec(devices, epochs=2, init=None, quant=None):
    return JobSpec.model_validate(
        {
            "name": f"ddp{devices}",
            "dataset": {"name": "synthetic", "train_size": 512, "test_size": 256},
            "model": {"arch": "resnet20", "init": init},
            "quantization": quant or {},
            "training": {
                "epochs": epochs,
                "batch_size": 64,
                "lr": 0.05 if init is None else 0.01,
                "devices": devices,
            },
        }
    )


TERNARY = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]}


@pytest.fixture(scope="module")
def fp_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    run(spec(1, epochs=3), out)
    return str(out / "model.pt")


def test_two_processes_match_one_and_share_their_step_sizes(fp_model, tmp_path):
    one, two = [], []
    r1 = run(spec(1, init=fp_model, quant=TERNARY), tmp_path / "one", on_epoch=one.append)
    r2 = run(spec(2, init=fp_model, quant=TERNARY), tmp_path / "two", on_epoch=two.append)
    assert [set(m) for m in two] == [FIELDS, FIELDS] and [m["epoch"] for m in two] == [1, 2]
    assert json.loads((tmp_path / "two/metrics.json").read_text())["result"] == r2
    assert set(r2) == set(r1) and r2["init_top1"] == r1["init_top1"]
    assert r2["final_top1"] > 50 and abs(r2["final_top1"] - r1["final_top1"]) < 15

    replicas = torch.load(tmp_path / "two/checkpoint.pt", weights_only=True)["replicas"]
    local, stepped = replicas["local_init"], replicas["after_first_step"]
    assert len(local) == len(stepped) == 2 and len(local[0]) == 36  # 18 layers x (w, a)
    # each replica initialised its activation steps from its own first batch ...
    assert local[0] != local[1]
    # ... and after rank 0's were broadcast, every replica holds the same steps
    assert stepped[0] == stepped[1] and stepped[0] != local[0]
    assert all(s > 0 and s != 1.0 for s in stepped[0])


def test_cancelling_a_data_parallel_job_stops_every_rank(fp_model, tmp_path):
    done = []
    with pytest.raises(Cancelled):
        run(
            spec(2, epochs=3, init=fp_model, quant=TERNARY),
            tmp_path,
            on_epoch=done.append,
            should_cancel=lambda: len(done) == 1,
        )
    assert len(json.loads((tmp_path / "metrics.json").read_text())["epochs"]) == 1
