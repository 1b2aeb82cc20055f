"""training.devices: 2 on the CPU: two gloo processes, DistributedDataParallel."""

import json

import pytest
import torch
from jobs import TERNARY, synthetic_spec

from lsq import distributed
from lsq.checkpoint import load_init_weights
from lsq.convert import quantize_model
from lsq.loop import init_steps
from lsq.networks import build_model
from lsq.train import Cancelled, run


def spec(devices, epochs=2, init=None, quant=None):
    return synthetic_spec(f"ddp{devices}", epochs, init, quant, devices=devices)


def test_two_processes_match_one(fp_model, tmp_path):
    one, two = [], []
    r1 = run(spec(1, init=fp_model, quant=TERNARY), tmp_path / "one", on_epoch=one.append)
    r2 = run(spec(2, init=fp_model, quant=TERNARY), tmp_path / "two", on_epoch=two.append)
    assert [m.epoch for m in two] == [1, 2]
    assert json.loads((tmp_path / "two/metrics.json").read_text())["result"] == r2.model_dump()
    assert r2.init_top1 == r1.init_top1
    assert r2.final_top1 > 50 and abs(r2.final_top1 - r1.final_top1) < 15


def _quantized(fp_model):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3)
    load_init_weights(model, fp_model)
    return quantize_model(model, **TERNARY)


def _first_batch(rank):
    return torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(rank))


def _init_on_rank(index, world, port, device_type, fp_model, out):
    """A spawned rank: the loop's step init on this rank's own first batch."""
    rank = distributed.join(index, world, port, device_type)
    try:
        model = _quantized(fp_model)
        init_steps(model, _first_batch(rank.rank))
        torch.save(distributed.step_sizes(model), f"{out}/{rank.rank}.pt")
    finally:
        distributed.close()


def test_every_replica_starts_from_rank_0s_step_sizes(fp_model, tmp_path):
    def rank_0(rank):
        model = _quantized(fp_model)
        init_steps(model, _first_batch(rank.rank))
        return distributed.step_sizes(model)

    args = (fp_model, str(tmp_path))
    steps_0 = distributed.launch(2, "cpu", _init_on_rank, args, rank_0)
    steps_1 = torch.load(tmp_path / "1.pt")
    # what each replica's own first batch would give, computed here without a process group
    own = []
    for rank in (0, 1):
        model = _quantized(fp_model)
        init_steps(model, _first_batch(rank))
        own.append(distributed.step_sizes(model))
    assert len(steps_0) == 36  # 18 layers x (weight, activation)
    assert not torch.allclose(own[0], own[1], rtol=1e-3)  # the batches differ, so would the steps
    assert torch.equal(steps_1, steps_0)  # ... but every replica holds rank 0's, exactly,
    torch.testing.assert_close(steps_0, own[0], rtol=1e-5, atol=0)  # (rank 0 used fewer threads)
    assert bool((steps_0 > 0).all()) and bool((steps_0 != 1.0).all())


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
