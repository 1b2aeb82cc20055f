"""CIFAR ResNets name their blocks as torchvision does (`layer2.1.conv1`), initialise exactly
as the single `layers` Sequential did before, and still load that layout's files."""

import shutil
from fnmatch import fnmatchcase

import pytest
import torch
import torch.nn.functional as F
from jobs import TERNARY
from jobs import synthetic_spec as spec
from torch import nn

from lsq import checkpoint
from lsq.convert import quantize_model
from lsq.networks import CifarResNet, _BasicBlock
from lsq.train import Cancelled, run

W, A = [-1, 0, 1], [0, 1, 2, 3]


class _OneSequential(nn.Module):
    """The layout before the stages had names, as it was written: every block in one
    `self.layers` Sequential, the modules created in the same order, the same init."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def old_key(key: str, n: int) -> str:
    """`layer2.1.conv1.weight` as the one-Sequential layout named it (`layers.4.conv1.weight`
    for n = 3 blocks per stage)."""
    if not key.startswith("layer") or key.startswith("layers."):
        return key
    stage, block, rest = key[len("layer") :].split(".", 2)
    return f"layers.{(int(stage) - 1) * n + int(block)}.{rest}"


def old_state(model: nn.Module, n: int = 3, prefix: str = "") -> dict[str, torch.Tensor]:
    """`model`'s state dict under the old keys (cloned: loading must not alias the source)."""
    return {prefix + old_key(k, n): v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def trained_looking(model: nn.Module) -> nn.Module:
    """Every parameter and buffer moved off its fresh value, so a skipped key shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.rand_like(value) + 0.5)
            else:
                value.fill_(7 if value.dtype == torch.long else 1)
    return model


def test_the_blocks_are_named_by_stage_and_registered_in_execution_order() -> None:
    model = CifarResNet(20)
    convs = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    assert convs[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert convs[-3:] == ["layer3.2.conv1", "layer3.2.conv2", "fc"] and len(convs) == 20
    assert [n for n in convs if fnmatchcase(n, "layer2.*")] == [
        f"layer2.{b}.conv{c}" for b in range(3) for c in (1, 2)
    ]
    assert len(CifarResNet(56).layer3) == 9  # ResNet-56: n = 9 blocks per stage
    called = []
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for name, m in leaves:
        m.register_forward_pre_hook(lambda *_, name=name: called.append(name))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert called == [n for n, _ in leaves]


@pytest.mark.parametrize("depth", [20, 32, 56])
@pytest.mark.parametrize("seed", [0, 3])
def test_a_seed_initialises_exactly_as_the_one_sequential_layout_did(depth, seed) -> None:
    """The same RNG draws: equal tensors under the key mapping, and bit-equal logits."""
    torch.manual_seed(seed)
    before = _OneSequential(depth, 7, 1)
    torch.manual_seed(seed)
    after = CifarResNet(depth, 7, 1)
    n = (depth - 2) // 6
    assert list(old_state(after, n)) == list(before.state_dict())  # the same order, too
    for key, value in old_state(after, n).items():
        assert torch.equal(value, before.state_dict()[key]), key
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        for training in (True, False):  # batch statistics, then the running ones
            assert torch.equal(before.train(training)(x), after.train(training)(x))


def test_an_old_model_pt_loads_through_load_init_weights(tmp_path) -> None:
    saved = trained_looking(CifarResNet(20))
    torch.save(old_state(saved), tmp_path / "model.pt")
    assert "layers.8.conv2.weight" in torch.load(tmp_path / "model.pt", weights_only=True)
    model = CifarResNet(20)
    checkpoint.load_init_weights(model, tmp_path / "model.pt")
    assert_same_state(model, saved)
    # a quantized run's checkpoint.pt ({"model": ...}): its steps are dropped, weights kept
    quantized = quantize_model(saved, W, A, first_last="same")
    torch.save({"model": old_state(quantized)}, tmp_path / "checkpoint.pt")
    model = CifarResNet(20)
    checkpoint.load_init_weights(model, tmp_path / "checkpoint.pt")
    assert_same_state(model, saved)


def test_an_old_quantized_state_dict_loads_steps_and_flags_included() -> None:
    torch.manual_seed(0)
    saved = quantize_model(CifarResNet(20), W, A, first_last="same")
    saved.train()(torch.randn(8, 3, 32, 32))  # initialises every input step from the batch
    state = old_state(saved.eval())
    assert state["layers.3.conv1.input_quantizer.initialized"]
    assert "layers.3.conv1.weight_quantizer.step" in state
    fresh = quantize_model(CifarResNet(20), W, A, first_last="same")
    assert fresh.layer2[0].conv1.input_quantizer.needs_init
    fresh.load_state_dict(state)  # strict: no key left over or missing
    assert_same_state(fresh, saved)
    assert not fresh.layer2[0].conv1.input_quantizer.needs_init  # the flag came with it
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), saved(x))


def test_the_renaming_honours_a_wrappers_prefix_and_depth() -> None:
    """DDP keeps the network as `module`: its keys are `module.layers.4...`."""
    saved = trained_looking(CifarResNet(32))  # n = 5: layers.7 is layer2.2
    wrapper = nn.Module()
    wrapper.module = CifarResNet(32)
    wrapper.load_state_dict(old_state(saved, n=5, prefix="module."))
    assert_same_state(wrapper.module, saved)
    assert torch.equal(wrapper.module.layer2[2].bn1.running_mean, saved.layer2[2].bn1.running_mean)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*layers\.x\.conv1\.weight"):
        CifarResNet(32).load_state_dict({**saved.state_dict(), "layers.x.conv1.weight": 0})


@pytest.mark.slow
def test_a_run_checkpointed_in_the_old_layout_resumes_like_a_new_one(tmp_path) -> None:
    s = spec(quant=TERNARY, epochs=2)
    done = []
    with pytest.raises(Cancelled):
        run(s, tmp_path / "new", on_epoch=done.append, should_cancel=lambda: bool(done))
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    state = torch.load(tmp_path / "old/checkpoint.pt", weights_only=False)
    state["model"] = {old_key(k, 3): v for k, v in state["model"].items()}
    assert "layers.3.conv1.weight_quantizer.step" in state["model"]
    torch.save(state, tmp_path / "old/checkpoint.pt")

    assert run(s, tmp_path / "old", resume=True) == run(s, tmp_path / "new", resume=True)
    a = torch.load(tmp_path / "new/model.pt", weights_only=True)
    b = torch.load(tmp_path / "old/model.pt", weights_only=True)
    assert "layer2.0.conv1.weight" in b and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
