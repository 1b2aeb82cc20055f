"""training.devices: 2 on the CPU: two gloo processes, DistributedDataParallel."""

import json

import pytest
import torch
import torch.nn.functional as F
from jobs import TERNARY, synthetic_spec
from torch.nn.parallel import DistributedDataParallel

from lsq import distributed
from lsq.checkpoint import load_init_weights
from lsq.convert import quantize_model
from lsq.loop import init_steps
from lsq.networks import build_model
from lsq.quantizer import step_parameters
from lsq.train import Cancelled, run


def spec(devices, epochs=2, init=None, quant=None):
    return synthetic_spec(f"ddp{devices}", epochs, init, quant, devices=devices)


@pytest.mark.slow
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
    g = torch.Generator().manual_seed(rank)
    return torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)


def step_sizes(model):
    return torch.cat([p.detach().flatten() for p in step_parameters(model)])


def _first_steps(rank, fp_model):
    """What the loop does first on a rank: init the steps from its own first batch, then one
    DistributedDataParallel step; the steps after each."""
    model = _quantized(fp_model)
    x, y = _first_batch(rank.rank)
    init_steps(model, x)
    initial = step_sizes(model)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
    F.cross_entropy(ddp(x), y).backward()
    optimizer.step()
    return initial, step_sizes(model)


def _on_rank(index, world, port, device_type, fp_model, out):
    rank = distributed.join(index, world, port, device_type)
    try:
        torch.save(_first_steps(rank, fp_model), f"{out}/{rank.rank}.pt")
    finally:
        distributed.close()


def test_every_replica_starts_from_rank_0s_step_sizes(fp_model, tmp_path):
    args = (fp_model, str(tmp_path))
    init_0, stepped_0 = distributed.launch(
        2, "cpu", _on_rank, args, lambda r: _first_steps(r, fp_model)
    )
    init_1, stepped_1 = torch.load(tmp_path / "1.pt")
    # what each replica's own first batch would give, computed here without a process group
    own = []
    for rank in (0, 1):
        model = _quantized(fp_model)
        init_steps(model, _first_batch(rank)[0])
        own.append(step_sizes(model))
    assert len(init_0) == 36  # 18 layers x (weight, activation)
    assert not torch.allclose(own[0], own[1], rtol=1e-3)  # the batches differ, so would the steps
    assert torch.equal(init_1, init_0)  # ... but every replica holds rank 0's, exactly,
    torch.testing.assert_close(init_0, own[0], rtol=1e-5, atol=0)  # (rank 0 used fewer threads)
    assert bool((init_0 > 0).all()) and bool((init_0 != 1.0).all())
    # and after a step on different batches (gradients averaged) they are still the same
    assert torch.equal(stepped_1, stepped_0) and not torch.equal(stepped_0, init_0)


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
