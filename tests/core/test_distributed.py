"""training.devices: 2 on the CPU: two gloo processes, DistributedDataParallel."""

import json

import pytest
import torch
from jobs import EPOCH_FIELDS as FIELDS
from jobs import TERNARY, synthetic_spec

from lsq.train import Cancelled, run


def spec(devices, epochs=2, init=None, quant=None):
    return synthetic_spec(f"ddp{devices}", epochs, init, quant, devices=devices)


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
