"""The peers' quantizers for bench/peers.py: each tool expressing W[-1,0,1] (and A[0,1,2,3])
with one learned step per tensor, configured as its documentation configures learned scales.

The first Conv2d/Linear and the last Linear stay float (as lsq.quantize_model's
first_last=float). Each converter returns a new module with the float model's weights. Tested
with torch 2.14.1, brevitas 0.13.4, nncf 3.4.0, torchao 0.18.0 (bench/requirements-peers.txt);
what each can and cannot express, with the evidence, is in docs/compares.md.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import lsq


def convert_ours(model: nn.Module, weight_only: bool, example: torch.Tensor) -> nn.Module:
    """lsq.quantize_model, then the activation steps from the first batch (lsq.loop.init_steps)."""
    from lsq.loop import init_steps

    q = lsq.quantize_model(
        copy.deepcopy(model), [-1, 0, 1], None if weight_only else [0, 1, 2, 3], "float"
    )
    init_steps(q, example)
    return q


def layers_to_quantize(model: nn.Module) -> list[str]:
    """Names of the Conv2d/Linear modules to quantize: all but the first Conv2d/Linear and the last
    Linear, in module registration order (lsq.convert.first_and_last)."""
    names = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    keep = {names[0] if names else None, linears[-1] if linears else None}
    return [n for n in names if n not in keep]


# --------------------------------------------------------------------------------------------
# 1. PyTorch: torch.ao.quantization._LearnableFakeQuantize (private class, no docs page; its
#    docstring cites the LSQ paper for use_grad_scaling)
# --------------------------------------------------------------------------------------------


def torch_weight_fake_quant(**kwargs):
    """{-1,0,1}*s: symmetric per-tensor qint8 restricted to [-1, 1]; zero point forced to 0 by the
    symmetric qscheme; gradient scale 1/sqrt(numel * quant_max) = LSQ's g for weights."""
    from torch.ao.quantization import MinMaxObserver
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    return _LearnableFakeQuantize(
        observer=MinMaxObserver, quant_min=-1, quant_max=1, dtype=torch.qint8,
        qscheme=torch.per_tensor_symmetric, use_grad_scaling=True, **kwargs,
    )  # fmt: skip


def torch_act_fake_quant(**kwargs):
    """{0,1,2,3}*s: affine per-tensor quint8 restricted to [0, 3] (the symmetric qscheme would make
    the observer pick scale = max/1.5 for an unsigned range); the zero point is zeroed and frozen
    after the observer's first estimate."""
    from torch.ao.quantization import MovingAverageMinMaxObserver
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    return _LearnableFakeQuantize(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=3, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine, use_grad_scaling=True, **kwargs,
    )  # fmt: skip


def _torch_start_learning(fq) -> None:
    """After the observer's estimate: learn the scale, keep the zero point at 0."""
    fq.enable_param_learning()
    with torch.no_grad():
        fq.zero_point.zero_()
    fq.zero_point.requires_grad_(False)


class TorchInputQuant(nn.Module):
    """An activation _LearnableFakeQuantize whose scale is first set by its observer from the first
    training batch (static estimate, min/max -> scale = max/3), then learned."""

    def __init__(self) -> None:
        super().__init__()
        self.fq = torch_act_fake_quant()
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.initialized):
            self.fq.enable_static_estimate()
            self.fq(x.detach())  # observer -> scale, zero point
            _torch_start_learning(self.fq)
            self.initialized.fill_(True)
        return self.fq(x)


def convert_torch(model: nn.Module, weight_only: bool) -> nn.Module:
    """Conv2d/Linear -> torch.ao.nn.qat.Conv2d/Linear, a _LearnableFakeQuantize on the weight
    (scale initialised from the weight by its MinMaxObserver: max|w|, then learned); inputs get a
    TorchInputQuant in front (nn.Sequential(input_quant, layer)) unless weight_only."""
    import torch.ao.nn.qat as nnqat
    from torch.ao.quantization import QConfig

    model = copy.deepcopy(model)
    qconfig = QConfig(activation=torch_act_fake_quant, weight=torch_weight_fake_quant)
    for name in layers_to_quantize(model):
        layer = model.get_submodule(name)
        layer.qconfig = qconfig
        qat_cls = nnqat.Conv2d if isinstance(layer, nn.Conv2d) else nnqat.Linear
        q = qat_cls.from_float(layer)
        q.weight_fake_quant(q.weight.detach())  # static estimate from the weight: s = max|w|
        _torch_start_learning(q.weight_fake_quant)
        model.set_submodule(name, q if weight_only else nn.Sequential(TorchInputQuant(), q))
    return model


# --------------------------------------------------------------------------------------------
# 2. Brevitas: its ready-made quantizers with bit_width overridden and the scale a learned
#    parameter (ScalingImplType.PARAMETER_FROM_STATS, as the Brevitas TVMCon 2021 tutorial's
#    LearnedIntWeightPerChannelFloat does; Int8ActPerTensorFloat/Uint8ActPerTensorFloat already use
#    it: "scale is a parameter initialized from statistics", collected for 300 training steps).
# --------------------------------------------------------------------------------------------


def brevitas_quantizers(collect_stats_steps: int = 300):
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import Int8WeightPerTensorFloat, Uint8ActPerTensorFloat

    class TernaryWeightLearnedScale(Int8WeightPerTensorFloat):
        # Int8WeightPerTensorFloat is narrow-range signed (NarrowIntQuant): 2 bits -> {-1, 0, 1}.
        # Its default scale is STATS (max|w| recomputed every step, not a parameter).
        bit_width = 2
        scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS  # init max|w|, then learned

    class Uint2ActLearnedScale(Uint8ActPerTensorFloat):
        # unsigned, zero point 0: 2 bits -> {0, 1, 2, 3}; PARAMETER_FROM_STATS (99.999th percentile
        # averaged over `collect_stats_steps` training batches, then a learned parameter)
        bit_width = 2

    return TernaryWeightLearnedScale, Uint2ActLearnedScale.let(
        collect_stats_steps=collect_stats_steps
    )


def convert_brevitas(
    model: nn.Module, weight_only: bool, collect_stats_steps: int = 300
) -> nn.Module:
    """Conv2d/Linear -> brevitas.nn.QuantConv2d/QuantLinear with the weights and biases copied
    (bias stays float); input_quant quantizes the layer's input unless weight_only."""
    from brevitas.nn import QuantConv2d, QuantLinear

    wq, aq = brevitas_quantizers(collect_stats_steps)
    model = copy.deepcopy(model)
    for name in layers_to_quantize(model):
        layer = model.get_submodule(name)
        kw = dict(
            weight_quant=wq, input_quant=None if weight_only else aq, bias=layer.bias is not None,
            device=layer.weight.device, dtype=layer.weight.dtype,
        )  # fmt: skip
        if isinstance(layer, nn.Conv2d):
            q = QuantConv2d(
                layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                padding_mode=layer.padding_mode, **kw,
            )  # fmt: skip
        else:
            q = QuantLinear(layer.in_features, layer.out_features, **kw)
        with (
            torch.no_grad()
        ):  # before the first forward: the weight scale is taken from this weight
            q.weight.copy_(layer.weight)
            if layer.bias is not None:
                q.bias.copy_(layer.bias)
        model.set_submodule(name, q)
    return model


# --------------------------------------------------------------------------------------------
# 3. NNCF 3.4: nncf.quantize (min-max calibration, inserts NNCF's own trainable quantizers), then
#    fine-tune, as NNCF's QAT docs say. (The legacy create_compressed_model is gone from NNCF 3.x.)
# --------------------------------------------------------------------------------------------


NNCF_NOT_QUANTIZED = ["adaptive_avg_pool2d", "avg_pool2d", "mean", "add", "__add__", "__iadd__",
                      "__radd__", "cat", "mul", "__mul__", "matmul"]  # fmt: skip


def convert_nncf(model: nn.Module, weight_only: bool, calibration: list[torch.Tensor]) -> nn.Module:
    """NNCF 3.4. nncf.quantize refuses 2 bits on conv/activations: its hardware configs (ANY/CPU/GPU
    allow 8 bits, NPU allows 2-bit weights only for MatMul/depthwise conv, never narrow range,
    and 4+ bits for activations) -> "Quantization parameter constraints ... are incompatible with
    HW capabilities". So: nncf.quantize at 8 bits per tensor (min-max calibration on `calibration`,
    a few input batches), then edit the quantizers it inserted to 2 bits:
      weights: SymmetricQuantizer, narrow range -> levels [-1, 1]: {-1,0,1} * scale
      inputs : SymmetricQuantizer, unsigned (post-ReLU) -> levels [0, 3]: {0,1,2,3} * scale/3
    `scale` (the learned nn.Parameter) is the clipping threshold: min-max gives max|w| and max(x),
    valid unchanged at 2 bits."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )
    from nncf.torch.quantization.layers import SymmetricQuantizer

    names = {n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
    ignored = [_nncf_node_name(n, model) for n in sorted(names - set(layers_to_quantize(model)))]
    per_tensor = QuantizationParameters(per_channel=False)
    q = nncf.quantize(
        copy.deepcopy(model), nncf.Dataset(calibration), subset_size=len(calibration),
        # lsq quantizes only the inputs of quantized layers: no NNCF input quantizers on pooling,
        # mean, residual adds or concatenations (names of the torch functions NNCF 3.x records)
        ignored_scope=nncf.IgnoredScope(names=ignored, types=NNCF_NOT_QUANTIZED, validate=False),
        advanced_parameters=AdvancedQuantizationParameters(
            weights_quantization_params=per_tensor, activations_quantization_params=per_tensor,
            disable_bias_correction=True,  # keep the float weights and biases (a plain QAT start)
            # default FIRST_LAYER doubles the first quantized conv's weight range (7-bit "half
            # range" at 8 bits): at 2 bits that rounds every weight of that layer to 0
            overflow_fix=OverflowFix.DISABLE,
        ),
    )  # fmt: skip
    hooked = [n for n, m in q.named_modules() if isinstance(m, SymmetricQuantizer)]
    missed = [node for node in ignored if any(f".{node}__1." in n for n in hooked)]
    assert not missed, (
        f"NNCF quantized layers meant to stay float: {missed}"
    )  # validate=False above
    for name, m in q.named_modules():
        if not isinstance(m, SymmetricQuantizer):
            continue
        is_weight = ".pre_hooks." in name and name.endswith("__1.0")  # input port 1 = the weight
        if is_weight:
            m._narrow_range = True
            m.num_bits = 2  # set_levels(): [-1, 1]
        elif weight_only:
            m.disable_quantization()
        else:
            m.num_bits = 2  # unsigned: [0, 3]
    return q


def _nncf_node_name(module_name: str, model: nn.Module) -> str:
    """NNCF 3.x graph node name of a module's call, e.g. 'conv1/conv2d/0'."""
    op = "conv2d" if isinstance(model.get_submodule(module_name), nn.Conv2d) else "linear"
    return f"{module_name.replace('.', '/')}/{op}/0"


# --------------------------------------------------------------------------------------------
# 4. torchao 0.18 QAT: QATConfig/IntxFakeQuantizeConfig only swap nn.Linear and nn.Embedding
#    (Conv2d: "Module of type 'Conv2d' does not have QAT support"), its granularities are per
#    token / per channel / per group (no per-tensor), and int2 is {-2,-1,0,1} (no narrow range).
#    The nearest expressible setting on a CNN needs our own glue around torchao's
#    IntxFakeQuantizer: int2 symmetric weights {-2,-1,0,1}*s and uint2 symmetric inputs
#    {0,1,2,3}*s, one scale per tensor by fake-quantizing a (1, numel) view, range_learning=True.
# --------------------------------------------------------------------------------------------


def torchao_configs():
    from torchao.quantization.granularity import PerAxis
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    weight = IntxFakeQuantizeConfig(torch.int2, PerAxis(0), is_symmetric=True, is_dynamic=False,
                                    range_learning=True)  # fmt: skip
    act = IntxFakeQuantizeConfig(torch.uint2, PerAxis(0), is_symmetric=True, is_dynamic=False,
                                 range_learning=True)  # fmt: skip
    return weight, act


class TorchaoPerTensorFQ(nn.Module):
    """torchao IntxFakeQuantizer over a (1, numel) view: one scale for the whole tensor."""

    def __init__(self, config) -> None:
        super().__init__()
        from torchao.quantization.qat import IntxFakeQuantizer

        self.fq = IntxFakeQuantizer(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fq(x.reshape(1, -1)).reshape(x.shape)


class TorchaoQuantConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_fq is not None:
            x = self.input_fq(x)
        return self._conv_forward(x, self.weight_fq(self.weight), self.bias)


class TorchaoQuantLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_fq is not None:
            x = self.input_fq(x)
        return nn.functional.linear(x, self.weight_fq(self.weight), self.bias)


def convert_torchao(model: nn.Module, weight_only: bool, example: torch.Tensor) -> nn.Module:
    """Nearest torchao setting (weights int2 = {-2,-1,0,1}*s, NOT ternary). `example`: one input
    batch for torchao.quantization.qat.initialize_fake_quantizers, which sets the scales
    (weights: max|w|/1.5; inputs: max|x|/1.5) and turns them into nn.Parameters: build the
    optimizer after this returns."""
    from torchao.quantization.qat import initialize_fake_quantizers

    wcfg, acfg = torchao_configs()
    model = copy.deepcopy(model)
    for name in layers_to_quantize(model):
        layer = model.get_submodule(name)
        layer.__class__ = TorchaoQuantConv2d if isinstance(layer, nn.Conv2d) else TorchaoQuantLinear
        layer.weight_fq = TorchaoPerTensorFQ(wcfg)
        layer.input_fq = None if weight_only else TorchaoPerTensorFQ(acfg)
    with torch.no_grad():
        was_training = model.training
        model.eval()  # keep BatchNorm running stats untouched by the init batch
        initialize_fake_quantizers(model, (example,))
        model.train(was_training)
    for m in model.modules():  # torchao leaves a symmetric quantizer's zero point a plain tensor
        if type(m).__name__ == "IntxFakeQuantizer" and isinstance(m.zero_point, torch.Tensor):
            zero_point = (
                m.zero_point
            )  # attribute: .to(device) would not move it (forward then fails)
            del m.zero_point
            m.register_buffer("zero_point", zero_point, persistent=False)
    return model
