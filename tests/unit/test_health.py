"""Quantizer health: hand-computed shares per level, and the warnings a run's history raises."""

import pytest
import torch
from torch import nn

from lsq.health import measure
from lsq.layers import QuantLinear
from lsq.metrics import QuantizerHealth, quantizer_warnings


def test_shares_per_level_and_steps_are_measured_on_one_batch():
    layer = QuantLinear(4, 2, bias=False, weight_levels=[-1, 0, 1], activation_levels=[0, 1, 2, 3])
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.9, -0.2, 0.1, -1.5], [0.0, 0.3, 0.6, 2.0]]))
        layer.weight_quantizer.step.fill_(1.0)  # codes: [1, 0, 0, -1], [0, 0, 1, 1]
        layer.input_quantizer.init_from(torch.ones(1))  # step 2 * 1 / sqrt(3)
        layer.input_quantizer.step.fill_(0.5)
    x = torch.tensor([[0.0, 0.2, 0.3, 2.0]])  # codes: 0, 0, 1, 3 (2.0 / 0.5 = 4 -> clipped)
    model = nn.Sequential(layer)
    health = {h.kind: h for h in measure(model.train(), x)}
    assert model.training  # measured in eval mode, then put back
    w, a = health["weight"], health["activation"]
    assert (w.layer, w.levels, w.step) == ("0", [-1, 0, 1], 1.0)
    assert w.shares == [1 / 8, 4 / 8, 3 / 8] and w.zero == 0.5
    assert (a.levels, a.step, a.shares, a.zero) == ([0, 1, 2, 3], 0.5, [0.5, 0.25, 0, 0.25], 0.5)


def h(step, zero=0.3, layer="conv", kind="weight"):
    return QuantizerHealth(layer=layer, kind=kind, step=step, zero=zero, levels=[], shares=[])


@pytest.mark.parametrize(
    ("history", "says"),
    [
        ([[h(0.1)], [h(0.2, zero=0.97)]], ["97% of the weights are 0"]),
        ([[h(0.1)], [h(0.5)], [h(1.5)]], ["the step grew from 0.1 to 1.5"]),
        ([[h(0.2)], [h(0.2)], [h(0.2)]], ["the step has not moved for 3 epochs"]),
        ([[h(0.2)], [h(0.21)], [h(0.22, zero=0.9)]], []),
        ([[h(0.1, kind="activation", zero=0.99)], [h(0.12, kind="activation", zero=0.99)]], []),
    ],
)
def test_warnings(history, says):
    found = quantizer_warnings(history)
    assert len(found) == len(says) and all(s in f for s, f in zip(says, found, strict=True))
