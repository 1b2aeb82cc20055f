"""The quantizer against hand-computed values and gradients (Esser et al., eq. 1-5)."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lsq
from lsq.quantizer import MIN_STEP, step_parameters


def test_ternary_values_and_gradients_by_hand():
    q = lsq.LsqQuantizer([-1, 0, 1])
    q.step.data.fill_(0.5)
    q._initialized = True
    v = torch.tensor([-1.0, -0.3, -0.2, 0.1, 0.26, 0.7], requires_grad=True)
    # v/s = [-2, -0.6, -0.4, 0.2, 0.52, 1.4] -> clip [-1, 1] -> round -> times s
    y = q(v)
    assert torch.equal(y, torch.tensor([-0.5, -0.5, 0.0, 0.0, 0.5, 0.5]))
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    # straight through inside (-1, 1), zero where clipped
    assert torch.equal(v.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 0.0]))
    # ds per element: -Q_N, round(x)-x = -0.4, 0.4, -0.2, 0.48, then Q_P; scaled by 1/sqrt(6*1)
    expected = (-1 * 1 - 0.4 * 2 + 0.4 * 3 - 0.2 * 4 + 0.48 * 5 + 1 * 6) / math.sqrt(6)
    assert q.step.grad.item() == pytest.approx(expected, rel=1e-6)


def test_unsigned_activation_gradient_scale_counts_features_per_sample():
    q = lsq.LsqQuantizer([0, 1, 2, 3], activation=True)
    q.step.data.fill_(1.0)
    q._initialized = True
    v = torch.tensor([[-0.5, 0.4, 1.6], [2.4, 3.2, 2.9]], requires_grad=True)
    y = q(v)
    assert torch.equal(y, torch.tensor([[0.0, 0.0, 2.0], [2.0, 3.0, 3.0]]))
    y.sum().backward()
    assert torch.equal(v.grad, torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    # ds = 0 (below: -Q_N = 0), -0.4, 0.4, -0.4, 3 (above), 0.1; N = 3 features, Q_P = 3
    assert q.step.grad.item() == pytest.approx((0 - 0.4 + 0.4 - 0.4 + 3 + 0.1) / 3, rel=1e-6)


def test_signed_two_bit_range_clips_at_minus_two_and_one():
    q = lsq.LsqQuantizer({"bits": 2, "signed": True})
    assert (q.q_n, q.q_p) == (2, 1)
    q.step.data.fill_(1.0)
    q._initialized = True
    y = q(torch.tensor([-3.7, -1.6, 0.4, 0.6, 5.0]))
    assert torch.equal(y, torch.tensor([-2.0, -2.0, 0.0, 1.0, 1.0]))


def test_weight_init_is_twice_mean_abs_over_sqrt_qp():
    q = lsq.LsqQuantizer([-1, 0, 1])
    q.init_from(torch.tensor([0.1, -0.5, 0.3, 2.0]))
    assert q.step.item() == pytest.approx(2 * 0.725 / 1)
    q3 = lsq.LsqQuantizer([0, 1, 2, 3])
    q3.init_from(torch.tensor([0.1, -0.5, 0.3, 2.0]))
    assert q3.step.item() == pytest.approx(2 * 0.725 / math.sqrt(3))


def test_activation_step_initialised_from_first_training_batch_only():
    q = lsq.LsqQuantizer([0, 1, 2, 3], activation=True)
    q.eval()
    q(torch.full((2, 4), 9.0))
    assert q.step.item() == 1.0 and not q.initialized  # evaluation never initialises
    q.train()
    first = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    q(first)
    assert q.step.item() == pytest.approx(2 * 1.5 / math.sqrt(3))
    q(torch.full((2, 2), 100.0))
    assert q.step.item() == pytest.approx(2 * 1.5 / math.sqrt(3))
    # a reloaded quantizer knows it was initialised
    fresh = lsq.LsqQuantizer([0, 1, 2, 3], activation=True)
    fresh.load_state_dict(q.state_dict())
    fresh(torch.full((2, 2), 100.0))
    assert fresh.step.item() == pytest.approx(2 * 1.5 / math.sqrt(3))


def test_per_channel_equals_per_tensor_on_each_row():
    torch.manual_seed(0)
    w = torch.randn(3, 2, 3, 3)
    pc = lsq.LsqQuantizer([-1, 0, 1], channels=3)
    pc.init_from(w)
    w1 = w.clone().requires_grad_()
    pc(w1).mul(torch.arange(w.numel()).reshape(w.shape).float()).sum().backward()
    for c in range(3):
        row = lsq.LsqQuantizer([-1, 0, 1])
        row.init_from(w[c])
        assert row.step.item() == pytest.approx(pc.step[c].item())
        wc = w[c].clone().requires_grad_()
        y = row(wc)
        y.mul(torch.arange(w.numel()).reshape(w.shape)[c].float()).sum().backward()
        assert torch.equal(y, lsq_fake(w[c], pc.step[c].detach(), 1, 1))
        assert torch.allclose(wc.grad, w1.grad[c])
        assert row.step.grad.item() == pytest.approx(pc.step.grad[c].item(), rel=1e-5)


def lsq_fake(v, s, q_n, q_p):
    return (v / s).clamp(-q_n, q_p).round() * s


def plain_lsq(v, s, q_n, q_p, g):
    """The autograd composition used by public implementations (detach tricks)."""
    s = (s - s * g).detach() + s * g
    x = (v / s).clamp(-q_n, q_p)
    x = (x.round() - x).detach() + x
    return x * s


@pytest.mark.parametrize("levels", [[-1, 0, 1], [0, 1, 2, 3], {"bits": 4, "signed": True}])
def test_matches_the_plain_autograd_composition(levels):
    torch.manual_seed(1)
    q = lsq.LsqQuantizer(levels)
    v = torch.randn(64, 16)
    q.init_from(v)
    v1, v2 = v.clone().requires_grad_(), v.clone().requires_grad_()
    s2 = q.step.detach().clone().reshape(()).requires_grad_()
    upstream = torch.randn(64, 16)
    q(v1).backward(upstream)
    g = 1 / math.sqrt(v.numel() * q.q_p)
    plain_lsq(v2, s2, q.q_n, q.q_p, g).backward(upstream)
    assert torch.allclose(q(v), plain_lsq(v, s2.detach(), q.q_n, q.q_p, g))
    assert torch.allclose(v1.grad, v2.grad)
    assert q.step.grad.item() == pytest.approx(s2.grad.item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("levels", [[-1, 0, 1], [0, 1, 2, 3], {"bits": 4, "signed": True}])
@pytest.mark.parametrize("channels", [1, 8])
def test_evaluation_gives_the_training_forward_bit_for_bit(levels, channels):
    """Without autograd the quantizer takes a shorter path (in place, nothing saved): the
    same values to the last bit, per tensor and per channel, steps at MIN_STEP included."""
    torch.manual_seed(2)
    q = lsq.LsqQuantizer(levels, channels=channels)
    v = 3 * torch.randn(8, 5, 4, 4)
    q.init_from(v)
    with torch.no_grad():
        q.step[0] = 0.0  # clamped to MIN_STEP by both paths
    trained = q(v.clone().requires_grad_())
    assert trained.grad_fn is not None
    with torch.inference_mode():
        evaluated = q(v)
    assert evaluated.grad_fn is None and torch.equal(evaluated, trained.detach())


def test_step_stays_positive_and_recovers():
    q = lsq.LsqQuantizer([-1, 0, 1])
    q._initialized = True
    q.step.data.fill_(-0.3)  # e.g. an optimizer overshoot
    v = torch.tensor([0.5, 2.0], requires_grad=True)
    y = q(v)
    assert torch.equal(y, torch.tensor([MIN_STEP, MIN_STEP]))
    y.backward(torch.tensor([-1.0, -1.0]))
    # the clamp passes the gradient straight through (both codes clipped at Q_P: ds = 1 each),
    # so SGD pushes the step back up instead of leaving it stuck at MIN_STEP
    assert q.step.grad.item() == pytest.approx(-2 / math.sqrt(2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu_keeps_dtype_and_values(dtype):
    q = lsq.LsqQuantizer([0, 1, 2, 3], activation=True)
    q.step.data.fill_(0.25)
    q._initialized = True
    v = torch.linspace(-1, 2, 64, dtype=dtype).reshape(4, 16).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = q(v)
    assert y.dtype == dtype
    assert torch.equal(y.float(), lsq_fake(v.detach().float(), torch.tensor(0.25), 0, 3))
    y.float().sum().backward()
    assert v.grad.dtype == dtype and q.step.grad.dtype == torch.float32


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if "_to_copy" in name and "device" in kwargs:
            name = "device copy"
        self.ops.append(name)
        return func(*args, **kwargs)

    def syncs(self) -> int:
        # .item(), .cpu(), bool(tensor) all go through _local_scalar_dense (or a device copy)
        return sum("_local_scalar_dense" in op or op == "device copy" for op in self.ops)


def test_no_host_synchronisation_in_forward_or_backward_and_one_to_measure_the_sign():
    """The first batch reads one boolean back (does the input hold a negative value?), since
    the level set it picks is Python's; weight init and every step after read nothing."""
    q = lsq.LsqQuantizer([0, 1, 2, 3], activation=True, channels=1).train()
    w = lsq.LsqQuantizer([-1, 0, 1], channels=4)
    v, weight = torch.randn(8, 4, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    with _RecordOps() as first:
        w.init_from(weight)
        q(v)
    assert first.syncs() == 1 and q.levels.levels == [-2, -1, 0, 1]
    with _RecordOps() as rec:
        (q(v) @ w(weight)).sum().backward()
    assert "aten.mul.Tensor" in rec.ops
    assert rec.syncs() == 0, rec.ops


def test_lsq_plus_offset_by_hand() -> None:
    """v_hat = round(clip((v - beta) / s, 0, 3)) * s + beta with s = 0.5, beta = -1; the offset's
    gradient is 1 where v is clipped and 0 inside (straight through), scaled by the step's
    g = 1 / sqrt(N Q_P) as LSQ+ does; the step's is LSQ's."""
    q = lsq.LsqQuantizer([0, 1, 2, 3], activation=True, offset=True)
    q.step.data.fill_(0.5)
    q.offset.data.fill_(-1.0)
    q._initialized = True
    v = torch.tensor([[-1.2, -1.0, 0.1, 0.3, 0.6, 2.0]], requires_grad=True)
    y = q(v)
    assert y.tolist() == [[-1.0, -1.0, 0.0, 0.5, 0.5, 0.5]]
    y.sum().backward()
    assert v.grad.tolist() == [[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]]
    assert q.offset.grad.item() == pytest.approx(4.0 / math.sqrt(6 * 3), rel=1e-6)
    # (v - beta) / s = [-0.4, 0, 2.2, 2.6, 3.2, 6]: codes - x inside = 0, 0, -0.2, 0.4, 3, 3
    assert q.step.grad.item() == pytest.approx(6.2 / math.sqrt(6 * 3), rel=1e-6)


def test_lsq_plus_starts_offset_and_step_at_the_least_squared_error() -> None:
    """Inputs on -1, 0, 1, 2 fit [0, 1, 2, 3] exactly with offset -1 and step 1; the unsigned
    set stays unsigned. A ReLU-fed input starts at offset 0."""
    q = lsq.LsqQuantizer([0, 1, 2, 3], activation=True, offset=True).train()
    v = torch.tensor([[-1.0, 0.0, 1.0, 2.0] * 50])
    assert torch.equal(q(v), v)
    assert q.offset.item() == -1.0 and q.step.item() == 1.0
    assert q.levels.levels == [0, 1, 2, 3] and not q.signed
    relu_fed = lsq.LsqQuantizer([0, 1, 2, 3], activation=True, offset=True).train()
    relu_fed(torch.tensor([[0.0, 1.0, 2.0, 0.5]]))
    assert relu_fed.offset.item() == 0.0
    assert step_parameters(torch.nn.Sequential(q)) == [q.step, q.offset]  # no weight decay


def test_lsq_plus_start_is_not_pulled_by_one_outlier() -> None:
    """One value at -50 among normal ones: starting the offset at the minimum spread the four
    levels so wide that every value rounded to one of them (MobileNetV2 diverged so)."""
    v = torch.randn(1, 20_000, generator=torch.Generator().manual_seed(0))
    v[0, 0] = -50.0
    q = lsq.LsqQuantizer([0, 1, 2, 3], activation=True, offset=True).train()
    q(v)
    assert -4.0 < q.offset.item() < -0.5
    shares = q.codes(v).flatten().unique(return_counts=True)[1] / v.numel()
    assert len(shares) == 4 and shares.max() < 0.6
