"""quantize_model: which layers are swapped, with which levels, and what they keep."""

import pytest
import torch
from torch import nn

import lsq
from lsq.layers import QuantConv2d, QuantLinear
from lsq.networks import build_model


@pytest.fixture
def net():
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=10, in_channels=3).eval()


def quant_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}


def test_twin_layers_without_quantizers_compute_exactly_what_the_float_layers_do():
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(3, 8, 3, 2, 1, bias=True), nn.Linear(12, 5)
    x, z = torch.randn(2, 3, 9, 9), torch.randn(4, 12)
    qconv, qlin = (
        QuantConv2d.from_float(conv, None, None),
        QuantLinear.from_float(linear, None, None),
    )
    assert torch.equal(qconv(x), conv(x)) and torch.equal(qlin(z), linear(z))


def test_quantization_off_keeps_the_model_and_its_outputs(net):
    x = torch.randn(2, 3, 32, 32)
    same = lsq.quantize_model(net, weight=None, activation=None, first_last="same")
    assert not quant_layers(same)
    assert torch.equal(same(x), net(x))


def test_sixteen_bit_quantization_is_nearly_float(net):
    x = torch.randn(8, 3, 32, 32)
    q = lsq.quantize_model(net, {"bits": 16, "signed": True}, {"bits": 16}, first_last="same")
    for m in q.modules():  # init the activation steps from a batch, leaving batch norm alone
        if isinstance(m, lsq.LsqQuantizer):
            m.train()
    q(x)
    q.eval()
    # the paper's init gives 16-bit steps of about mean|v|/128: within 2% of the float logits
    assert (q(x) - net(x)).abs().max() < 0.02 * net(x).abs().max()


def test_first_last_float_keeps_first_conv_and_last_linear_full_precision(net):
    q = lsq.quantize_model(net, [-1, 0, 1], [0, 1, 2, 3], first_last="float")
    assert type(q.conv1) is nn.Conv2d and type(q.fc) is nn.Linear
    layers = quant_layers(q)
    assert len(layers) == 18  # resnet20: 19 convs and 1 linear, less the first conv
    for layer in layers.values():
        assert (layer.weight_quantizer.q_n, layer.weight_quantizer.q_p) == (1, 1)
        assert (layer.input_quantizer.q_n, layer.input_quantizer.q_p) == (0, 3)
    assert type(net.layer1[0].conv1) is nn.Conv2d, "the original model was modified"


def test_first_last_same_quantizes_them_and_the_image_input_is_signed(net):
    q = lsq.quantize_model(net, [-1, 0, 1], [0, 1, 2, 3], first_last="same")
    assert isinstance(q.conv1, QuantConv2d) and isinstance(q.fc, QuantLinear)
    # the normalised image is signed: [0,1,2,3] becomes the 4-level signed set [-2,-1,0,1]
    assert q.conv1.input_quantizer.levels.levels == [-2, -1, 0, 1]
    assert q.fc.input_quantizer.levels.levels == [0, 1, 2, 3]
    assert torch.equal(q.conv1.weight, net.conv1.weight) and torch.equal(q.fc.bias, net.fc.bias)


def test_first_last_level_set_of_their_own(net):
    q = lsq.quantize_model(net, [-1, 0, 1], [0, 1, 2, 3], first_last={"bits": 8, "signed": True})
    assert (q.conv1.weight_quantizer.q_n, q.conv1.weight_quantizer.q_p) == (128, 127)
    assert (q.fc.input_quantizer.q_n, q.fc.input_quantizer.q_p) == (128, 127)
    assert (q.layer1[0].conv1.weight_quantizer.q_n, q.layer1[0].conv1.weight_quantizer.q_p) == (
        1,
        1,
    )


def test_weight_only_and_per_channel(net):
    q = lsq.quantize_model(net, [-1, 0, 1], None, per_channel=True)
    layer = q.layer2[0].conv2
    assert layer.input_quantizer is None
    assert layer.weight_quantizer.step.shape == (32,)
    expected = 2 * net.layer2[0].conv2.weight.abs().mean(dim=(1, 2, 3))
    assert torch.allclose(layer.weight_quantizer.step, expected)


def test_step_sizes_get_no_weight_decay_and_their_own_learning_rate(net):
    from lsq.loop import make_scheduler, param_groups
    from lsq.spec import TrainingSpec

    q = lsq.quantize_model(net, [-1, 0, 1], [0, 1, 2, 3])
    t = TrainingSpec(lr=0.01, weight_decay=1e-4, step_lr_scale=10, epochs=2)
    groups = param_groups(q, t)
    decayed, free = groups
    steps = {id(p) for n, p in q.named_parameters() if n.endswith("step")}
    assert len(steps) == 36 and {id(p) for p in free["params"]} == steps
    assert free["weight_decay"] == 0 and not steps & {id(p) for p in decayed["params"]}
    optimizer = torch.optim.SGD(groups, lr=t.lr)
    scheduler = make_scheduler(optimizer, t)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.1])
    scheduler.step()  # cosine over 2 epochs: half way, each group at half its own rate
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.005, 0.05])


def test_quantized_layers_are_built_like_their_torch_parents():
    torch.manual_seed(0)
    conv = QuantConv2d(3, 16, 3, padding=1, weight_levels=[-1, 0, 1], activation_levels=[0, 1])
    linear = QuantLinear(16, 4, bias=False, weight_levels={"bits": 2, "signed": True})
    assert (conv.weight.shape, conv.padding, linear.bias) == ((16, 3, 3, 3), (1, 1), None)
    w = conv.weight.detach()
    # the paper's init from the layer's own weights: 2 * mean|w| / sqrt(Q_P), Q_P = 1
    assert conv.weight_quantizer.step.item() == pytest.approx(2 * w.abs().mean().item())
    assert conv.input_quantizer.needs_init and linear.input_quantizer is None
    y = linear(conv(torch.randn(2, 3, 8, 8)).mean((2, 3)))
    assert y.shape == (2, 4) and torch.isfinite(y).all()
    # from_float builds on the constructor: the float layer's hyperparameters and weights
    float_conv = nn.Conv2d(4, 8, 5, stride=2, dilation=2, groups=2, bias=False)
    twin = QuantConv2d.from_float(float_conv, [-1, 0, 1], None, per_channel=True)
    assert (twin.stride, twin.dilation, twin.groups, twin.bias) == ((2, 2), (2, 2), 2, None)
    assert torch.equal(twin.weight, float_conv.weight) and twin.weight_quantizer.step.shape == (8,)


def test_quantizers_live_on_their_layers_device_and_conversion_keeps_the_rng():
    meta = QuantConv2d(3, 8, 3, device="meta", weight_levels=[-1, 0, 1], activation_levels=[0, 1])
    assert meta.weight_quantizer.step.is_meta and meta.input_quantizer.step.is_meta
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    frozen = nn.Linear(4, 2).requires_grad_(False)
    torch.manual_seed(0)
    QuantLinear.from_float(frozen, [-1, 0, 1], [0, 1, 2, 3])
    assert torch.equal(torch.rand(3), expected)  # from_float drew no random numbers
    assert not QuantLinear.from_float(frozen, [-1, 0, 1]).weight.requires_grad
