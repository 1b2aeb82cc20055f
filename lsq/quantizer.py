"""The LSQ quantizer (Esser et al., ICLR 2020): v_hat = round(clip(v / s, -Q_N, Q_P)) * s.

One fused autograd function instead of the usual divide/clamp/round/multiply composition:
the forward keeps no intermediate but its inputs, and the backward computes both gradients
in one pass, with the gradient scale g = 1 / sqrt(N * Q_P) applied to the step's gradient.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .levels import Init, LevelSet, parse_levels

# Step sizes are kept at or above this so the quantizer never divides by zero or goes negative.
MIN_STEP = 1e-8


class _LsqFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, g: float):
        s = step.clamp_min(MIN_STEP)
        x = v.float() / s
        inside = (x > -q_n) & (x < q_p)
        codes = x.clamp(-q_n, q_p).round_()
        # d v_hat / d s: round(x) - x inside, -Q_N below, Q_P above; outside, codes is exactly
        # -Q_N or Q_P, so it is codes - x * inside everywhere. Saved instead of v: the backward
        # is then one multiply for v and one reduction for s.
        ctx.save_for_backward(inside, codes - x * inside)
        ctx.q = (g, s.shape)
        return (codes * s).to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        inside, ds = ctx.saved_tensors
        g, shape = ctx.q
        grad_v = grad * inside
        # torch's own reduction, not BLAS dot: MKL may change its thread count with the
        # machine's load, and with it the summation order (runs would not repeat exactly).
        dims = tuple(range(1, grad.dim())) if len(shape) else tuple(range(grad.dim()))
        grad_s = (grad.float() * ds).sum(dim=dims)
        # The clamp on s is straight-through so a step that hit MIN_STEP can still grow back.
        return grad_v, (grad_s * g).reshape(shape), None, None, None


def lsq_quantize(v: torch.Tensor, step: torch.Tensor, levels: LevelSet, n: int) -> torch.Tensor:
    """Fake-quantize v with step size(s) `step`; the step's gradient is scaled by 1/sqrt(n*Q_P)."""
    if not (torch.is_grad_enabled() and (v.requires_grad or step.requires_grad)):
        # Evaluation: the forward's own operations, in place, and nothing kept for a backward.
        s = step.clamp_min(MIN_STEP)
        return (v.float() / s).clamp_(-levels.q_n, levels.q_p).round_().mul_(s).to(v.dtype)
    return _LsqFunction.apply(v, step, levels.q_n, levels.q_p, gradient_scale(levels, n))


def gradient_scale(levels: LevelSet, n: int) -> float:
    """The paper's g = 1 / sqrt(N * Q_P): a step's gradient sums over N values, each up to Q_P."""
    return 1.0 / math.sqrt(n * (levels.q_p if levels.q_p > 0 else levels.q_n))


def initial_step(v: torch.Tensor, levels: LevelSet, dims: list[int] | None = None) -> torch.Tensor:
    """The paper's init, 2 * mean(|v|) / sqrt(Q_P), over all of v or per slice along `dims` kept."""
    q = levels.q_p if levels.q_p > 0 else levels.q_n
    mean = v.detach().float().abs().mean() if dims is None else v.detach().float().abs().mean(dims)
    return (2 * mean / math.sqrt(q)).clamp_min(MIN_STEP)


MSE_CANDIDATES, MSE_SAMPLE = 100, 1 << 18
# Where LSQ+'s offset may start: these quantiles of the input (none above zero), each searched
# on a sample of 2^16 values (six searches: the start costs about what one `mse` search does).
OFFSET_QUANTILES, OFFSET_SAMPLE = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25), 1 << 16


def mse_step(v: torch.Tensor, levels: LevelSet, per_channel: bool = False) -> torch.Tensor:
    """The step among 100 evenly spaced up to max|v| / Q with the least squared quantization
    error on v (on an evenly strided sample of 2^18 values at most), or one per slice along
    dim 0. At 2 bits the paper's rule clips far less than the error-optimal step does (Banner
    et al. 2019)."""
    rows = _sample(v, per_channel)
    q = levels.q_p if levels.q_p > 0 else levels.q_n
    best, _ = _least_error_step(rows, levels, rows.abs().amax(1) / q)
    return best if per_channel else best[0]


def mse_offset_step(v: torch.Tensor, levels: LevelSet) -> tuple[torch.Tensor, torch.Tensor]:
    """LSQ+'s start for an unsigned set with a learned offset: the (offset, step) pair with the
    least squared error on v, the offset among low quantiles of v, the step by `mse_step`'s
    search on v - offset. The input's bare minimum, one outlier, would spread the few levels so
    wide that most values round to one of them."""
    rows = _sample(v, per_channel=False, size=OFFSET_SAMPLE)
    quantiles = torch.tensor(OFFSET_QUANTILES, device=rows.device)
    best = (torch.zeros(()), torch.ones(()), float("inf"))
    for beta in torch.quantile(rows[0], quantiles).clamp(max=0).unique():
        shifted = rows - beta
        step, error = _least_error_step(shifted, levels, shifted.amax(1) / levels.q_p)
        if float(error[0]) < best[2]:
            best = (beta, step[0], float(error[0]))
    return best[0], best[1]


def _sample(v: torch.Tensor, per_channel: bool, size: int = MSE_SAMPLE) -> torch.Tensor:
    """v as rows (one per channel, or one), every k-th value so a row has `size` at most."""
    rows = v.detach().float().flatten(1) if per_channel else v.detach().float().reshape(1, -1)
    return rows[:, :: max(1, rows.numel() // size)]


def _least_error_step(
    rows: torch.Tensor, levels: LevelSet, top: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the step among 100 evenly spaced up to `top` with the least squared error."""
    top = top.clamp_min(MIN_STEP)
    best, best_error = top, torch.full_like(top, float("inf"))
    for k in range(1, MSE_CANDIDATES + 1):
        s = (top * k / MSE_CANDIDATES)[:, None]
        codes = (rows / s).clamp(-levels.q_n, levels.q_p).round()
        error = (codes * s - rows).square().sum(1)
        best, best_error = torch.where(error < best_error, s[:, 0], best), error.minimum(best_error)
    return best.clamp_min(MIN_STEP), best_error


class LsqQuantizer(nn.Module):
    """A learned-step quantizer for a weight tensor or for the activations entering a layer.

    - ``channels``: 1 for one step per tensor, C for one per output channel (dim 0 of a weight).
    - ``activation``: for activations the gradient-scale N is the number of features of one
      sample (the batch dimension is not counted, as in the paper); for weights N is the
      number of elements one step covers. The activation step is initialised from the first
      batch seen in training mode, unless ``init_from`` was called first.
    - ``init``: ``lsq``, the paper's step 2 mean(|v|) / sqrt(Q_P), or ``mse``, the step with the
      least squared quantization error (per channel when the steps are).
    """

    # Off only to measure what measuring recovers (bench/zoo.py): then an unsigned set stays
    # unsigned whatever its input holds, the assumption of every layer being post-ReLU.
    measure_sign = True

    def __init__(
        self,
        levels: Any,
        *,
        channels: int = 1,
        activation: bool = False,
        init: Init = "lsq",
        offset: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.levels = self.converted = parse_levels(levels)
        self.activation = activation
        self.init = init
        self.step = nn.Parameter(torch.ones(channels, device=device))
        # Persisted so a reloaded model does not re-initialise; mirrored in a Python bool so the
        # forward never reads a device tensor on the host.
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool, device=device))
        self._initialized = False
        if activation:  # True once a negative input widened an unsigned set to the signed one
            self.register_buffer("signed", torch.zeros((), dtype=torch.bool, device=device))
        # LSQ+ (Bhalgat et al. 2020): a learned offset beta, v_hat = q(v - beta) + beta, so an
        # unsigned set covers an input that dips below zero without giving up half its levels.
        self.offset = nn.Parameter(torch.zeros(1, device=device)) if offset and activation else None
        self.register_load_state_dict_pre_hook(_sync_initialized_flag)

    @property
    def needs_init(self) -> bool:
        """True until a step was set from data (``init_from`` or the first training batch)."""
        return not self._initialized

    @property
    def q_n(self) -> int:
        return self.levels.q_n

    @property
    def q_p(self) -> int:
        return self.levels.q_p

    def _step_view(self, v: torch.Tensor) -> torch.Tensor:
        if self.step.numel() == 1:
            return self.step.reshape(())
        return self.step.reshape(-1, *([1] * (v.dim() - 1)))

    @torch.no_grad()
    def init_from(self, v: torch.Tensor) -> None:
        """Set the step from v by this quantizer's rule (per channel if this quantizer is). An
        activation quantizer whose input v holds a negative value takes the signed set with as
        many levels ([0,1,2,3] -> [-2,-1,0,1]): an unsigned set would clip it all to zero."""
        per_channel = self.step.numel() > 1
        negative = self.activation and self.measure_sign and not self.levels.signed
        if negative and self.offset is None and bool((v < 0).any()):
            self.signed.fill_(True)
            self.levels = self.converted.as_signed()
        if self.offset is not None and not self.levels.signed:
            # LSQ+ starts both from the least squared error, whatever `init` says.
            beta, s = mse_offset_step(v, self.levels)
            self.offset.copy_(beta.reshape(1))
        elif self.init == "mse":
            s = mse_step(v, self.levels, per_channel)
        else:
            s = initial_step(v, self.levels, dims=list(range(1, v.dim())) if per_channel else None)
        self.step.copy_(s.reshape(self.step.shape))
        self.initialized.fill_(True)
        self._initialized = True

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.needs_init and self.training:
            self.init_from(v)
        if self.activation:
            n = v[0].numel() if v.dim() > 1 else v.numel()
        else:
            n = v.numel() // self.step.numel()
        if self.offset is not None:  # its gradient scaled as the step's, as LSQ+ does
            g = gradient_scale(self.levels, n)
            beta = ((self.offset - self.offset * g).detach() + self.offset * g).to(v.dtype)
            beta = beta.reshape(())
            return lsq_quantize(v - beta, self._step_view(v), self.levels, n) + beta
        return lsq_quantize(v, self._step_view(v), self.levels, n)

    @torch.no_grad()
    def codes(self, v: torch.Tensor) -> torch.Tensor:
        """The integer codes round(clip(v / s)), as floats."""
        s = self._step_view(v).clamp_min(MIN_STEP)
        v = v.float() - (self.offset.float() if self.offset is not None else 0)
        return (v / s).clamp(-self.q_n, self.q_p).round()

    def sync_levels(self) -> None:
        """The set given at conversion, or its signed twin if the `signed` buffer says so."""
        signed = self.activation and bool(self.signed)
        self.levels = self.converted.as_signed() if signed else self.converted

    def extra_repr(self) -> str:
        kind = (
            "activation, input measured signed"
            if self.activation and self.signed
            else ("activation" if self.activation else "weight")
        )
        offset = ", learned offset" if self.offset is not None else ""
        return f"levels={self.levels}, {kind}, channels={self.step.numel()}{offset}"


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The step sizes (and LSQ+ offsets) of every quantizer in `model`, in module order."""
    quantizers = [m for m in model.modules() if isinstance(m, LsqQuantizer)]
    return [p for q in quantizers for p in (q.step, q.offset) if p is not None]


def _sync_initialized_flag(module: LsqQuantizer, state_dict: dict, prefix: str, *_: Any) -> None:
    """Loading a state dict sets the Python flag and the level set from the saved buffers. A
    checkpoint from before inputs were measured has no `signed`: its sets are as converted."""
    flag = state_dict.get(prefix + "initialized")
    if flag is not None:
        module._initialized = bool(flag)
    if module.activation:
        signed = state_dict.setdefault(prefix + "signed", torch.zeros((), dtype=torch.bool))
        module.signed.copy_(signed)
        module.sync_levels()
