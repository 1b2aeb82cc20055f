"""Where each method's step gradient differs from the paper's: a numeric check, no training.

x = [-1.3, -0.2, 0.05, 0.7, 2.5], step s = 0.5, loss = sum of the quantized values. The paper's
gradient (Esser et al., eq. 3, times g = 1/sqrt(N Q_P)) is computed here from its formula; every
method's dL/ds is read from its own autograd, converted to the step where its parameter is a
clipping threshold (threshold = Q_P s).
"""

from __future__ import annotations

import math

import peer_quantizers as peers
import torch
from torch import nn

X = torch.tensor([-1.3, -0.2, 0.05, 0.7, 2.5])
STEP = 0.5
SETS = {"W[-1,0,1]": (1, 1), "A[0,1,2,3]": (0, 3)}  # (Q_N, Q_P)


def paper(q_n: int, q_p: int) -> float:
    total = 0.0
    for v in (X / STEP).tolist():
        total += -q_n if v <= -q_n else q_p if v >= q_p else round(v) - v
    return total / math.sqrt(len(X) * q_p)


def ours(weight: bool) -> float:
    from lsq.levels import parse_levels
    from lsq.quantizer import lsq_quantize

    levels = parse_levels([-1, 0, 1] if weight else [0, 1, 2, 3])
    s = torch.tensor(STEP, requires_grad=True)
    lsq_quantize(X, s, levels, len(X)).sum().backward()
    return s.grad.item()


def pytorch(weight: bool) -> float:
    fq = peers.torch_weight_fake_quant() if weight else peers.torch_act_fake_quant()
    peers._torch_start_learning(fq)
    with torch.no_grad():
        fq.scale.fill_(STEP)
    fq(X).sum().backward()
    return fq.scale.grad.item()


def brevitas(weight: bool) -> float:
    from brevitas.nn import QuantIdentity, QuantLinear

    wq, aq = peers.brevitas_quantizers(collect_stats_steps=1)
    if weight:
        layer = QuantLinear(len(X), 1, bias=False, weight_quant=wq)
        with torch.no_grad():
            layer.weight.copy_(X.reshape(1, -1))
        layer.quant_weight()  # the scale parameter from the weight's statistics
        p = layer.weight_quant.tensor_quant.scaling_impl.value
        with torch.no_grad():
            p.fill_(STEP)
        layer.quant_weight().value.sum().backward()
        return p.grad.item()
    act = QuantIdentity(act_quant=aq, return_quant_tensor=True).train()
    act(torch.rand(10))  # one statistics step, then the threshold is a parameter
    act(torch.rand(10))
    p = next(v for n, v in act.named_parameters() if "scaling_impl.value" in n)
    with torch.no_grad():
        p.fill_(3 * STEP)  # its parameter is the threshold, 3 s
    act(X.clone()).value.sum().backward()
    return 3 * p.grad.item()


def nncf(weight: bool) -> float:
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.torch.quantization.layers import PTQuantizerSpec, SymmetricQuantizer

    spec = PTQuantizerSpec(
        num_bits=2, mode=QuantizationScheme.SYMMETRIC, signedness_to_force=weight,
        narrow_range=weight, half_range=False, scale_shape=(1,), logarithm_scale=False,
    )  # fmt: skip
    q = SymmetricQuantizer(spec)
    q_p = q.level_high  # 1 for {-1,0,1}, 3 for {0..3}: the threshold is q_p s
    q.scale = nn.Parameter(torch.tensor([q_p * STEP]))
    q(X.clone()).sum().backward()
    return q._scale_param_storage.grad.item() * q_p


def torchao(weight: bool) -> float:
    from torchao.quantization.qat import IntxFakeQuantizer

    w, a = peers.torchao_configs()
    fq = IntxFakeQuantizer(w if weight else a)
    fq._initialized = True  # what initialize_fake_quantizers sets before its one forward
    fq(X.reshape(1, -1))  # initialises the scale as a parameter
    with torch.no_grad():
        fq.scale.fill_(STEP)
    fq(X.reshape(1, -1)).sum().backward()
    return fq.scale.grad.item()


PROBES = {"ours": ours, "torch": pytorch, "brevitas": brevitas, "nncf": nncf, "torchao": torchao}


def report(methods: list[str]) -> None:
    print("| method | dL/ds, W[-1,0,1] | dL/ds, A[0,1,2,3] |\n|---|---|---|")
    print(f"| the paper (eq. 3 with g) | {paper(1, 1):.4f} | {paper(0, 3):.4f} |")
    for method in methods:
        w, a = PROBES[method](True), PROBES[method](False)
        print(f"| {method} | {w:.4f} | {a:.4f} |", flush=True)


if __name__ == "__main__":
    report(list(PROBES))
