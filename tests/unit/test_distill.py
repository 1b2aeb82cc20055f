"""Knowledge distillation (training.distill): the loss by hand, and runs that use it."""

import math

import pytest
import torch
from jobs import TERNARY
from jobs import synthetic_spec as spec
from pydantic import ValidationError
from torch import nn

from lsq.distributed import SINGLE
from lsq.loop import Hooks, Trainer
from lsq.spec import JobSpec
from lsq.train import run


def test_the_distillation_loss_by_hand() -> None:
    s = spec(distill={"teacher": "unused.pt", "temperature": 2.0, "alpha": 0.25})
    student, teacher = nn.Linear(3, 4), nn.Linear(3, 4)
    trainer = Trainer.create(s, student, torch.device("cpu"), None, SINGLE, Hooks(), teacher)
    x, labels_loss = torch.randn(5, 3), torch.tensor(1.5)
    logits = student(x)
    got = trainer._distilled(labels_loss, logits, x)
    # sum over samples and classes of p_t (log p_t - log p_s) at T = 2, / batch, x T^2
    expected = 0.0
    for s_row, t_row in zip(logits.tolist(), teacher(x).tolist(), strict=True):
        zs = sum(math.exp(v / 2) for v in s_row)
        zt = sum(math.exp(v / 2) for v in t_row)
        for a, b in zip(s_row, t_row, strict=True):
            p_t = math.exp(b / 2) / zt
            expected += p_t * (math.log(p_t) - math.log(math.exp(a / 2) / zs))
    expected = 0.25 * 4 * expected / 5 + 0.75 * 1.5
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert trainer.teacher_clock.take() > 0  # the teacher's forward was timed
    got.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


def test_distill_is_bounded_and_strict() -> None:
    bad = [
        {"teacher": "t.pt", "alpha": 1.5},
        {"teacher": "t.pt", "temperature": 0},
        {"teacher": {"job": 3}},  # a job id is the service's
        {"alpha": 0.5},
        {"teacher": "t.pt", "beta": 1},
    ]
    for distill in bad:
        with pytest.raises(ValidationError):
            spec(distill=distill)


def test_a_pretrained_teacher_is_imagenet_only() -> None:
    with pytest.raises(ValidationError, match="'pretrained' is torchvision's ImageNet model"):
        spec(distill={"teacher": "pretrained"})  # synthetic data: its head would be random
    JobSpec.model_validate(
        {
            "name": "x",
            "dataset": {"name": "imagenet", "root": "/data/imagenet"},
            "model": {"arch": "resnet18", "init": "pretrained"},
            "training": {"distill": {"teacher": "pretrained"}},
        }
    )


@pytest.fixture(scope="module")
def plain_run(fp_model, tmp_path_factory):
    epochs = []
    run(spec(init=fp_model, quant=TERNARY, epochs=1), tmp_path_factory.mktemp("plain"),
        on_epoch=epochs.append)  # fmt: skip
    return epochs[0]


@pytest.mark.slow
def test_alpha_zero_is_training_on_the_labels_alone(fp_model, plain_run, tmp_path) -> None:
    epochs = []
    distill = {"teacher": fp_model, "alpha": 0.0}
    s = spec(init=fp_model, quant=TERNARY, epochs=1, distill=distill)
    run(s, tmp_path, on_epoch=epochs.append)
    assert epochs[0].train_loss == plain_run.train_loss
    assert epochs[0].test_top1 == plain_run.test_top1
    assert 0 < epochs[0].teacher_seconds < epochs[0].seconds  # its cost, reported


@pytest.mark.slow
def test_a_teacher_changes_what_the_student_learns(fp_model, plain_run, tmp_path) -> None:
    epochs = []
    distill = {"teacher": fp_model}  # the paper's: temperature 1, alpha 0.5
    result = run(
        spec(init=fp_model, quant=TERNARY, epochs=1, distill=distill),
        tmp_path,
        on_epoch=epochs.append,
    )
    assert epochs[0].train_loss != plain_run.train_loss
    assert result.final_top1 > 25  # learns (10 classes); better or worse is bench/accuracy.md's
    saved = JobSpec.model_validate_json(spec(distill=distill).model_dump_json())
    assert saved.training.distill.teacher == fp_model
