"""Level sets and the job spec: what is accepted, and what each rejection says."""

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from lsq import LevelSet, from_bits, parse_levels
from lsq.spec import JobSpec, describe_errors

EXAMPLES = sorted(  # job specs; experiment-*.yaml are the service's experiments
    p for p in (Path(__file__).parents[2] / "examples").glob("*.yaml")
    if not p.name.startswith("experiment-") and "plugin" not in p.name  # test_plugin's
)  # fmt: skip


@pytest.mark.parametrize(
    ("given", "q_n", "q_p"),
    [
        ([-1, 0, 1], 1, 1),
        ([0, 1, 2, 3], 0, 3),
        ([1, -1, 0, -2], 2, 1),
        ([0, 1], 0, 1),
        ({"bits": 2, "signed": True, "symmetric": True}, 1, 1),
        ({"bits": 2, "signed": True}, 2, 1),
        ({"bits": 2}, 0, 3),
        ({"bits": 8, "signed": True}, 128, 127),
        ({"bits": 16}, 0, 65535),
        ({"min": -1, "max": 40000}, 1, 40000),
        ({"min": 0, "max": 1}, 0, 1),
    ],
)
def test_accepted_level_sets(given, q_n, q_p):
    assert parse_levels(given) == LevelSet(q_n, q_p)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ([0, 2, 5], "not contiguous"),
        ([1, 2, 3], "does not contain 0"),
        ([], "fewer than 2 levels"),
        ([0], "fewer than 2 levels"),
        ([0.5, 1], "non-integers"),
        ([True, False], "non-integers"),
        ([0, 0, 1], "repeats"),
        ({"bits": 17}, "between 1 and 16"),
        ({"bits": 0}, "between 1 and 16"),
        ({"bits": 2, "symmetric": True}, "signed level sets only"),
        ({"bit": 2}, "unknown key"),
        ("ternary", "expected a list of contiguous integers"),
        (list(range(-1, 2**16)), "at most 2^16"),
        ({"min": -1, "max": 2**16}, "at most 2^16"),
        ({"min": 1, "max": 3}, "do not take in 0"),
        ({"min": 0, "max": 0}, "at least 2 levels"),
        ({"min": -1}, "exactly 'min' and 'max'"),
        ({"min": -1, "max": 1, "bits": 2}, "exactly 'min' and 'max'"),
        ({"min": -1.0, "max": 1}, "must be integers"),
    ],
)
def test_rejected_level_sets_say_what_is_wrong_and_what_is_accepted(given, says):
    with pytest.raises(ValueError, match=re.escape(says)) as err:
        parse_levels(given)
    if not any(s in says for s in ("between 1 and 16", "signed", "at most", "at least")):
        assert "contiguous integers that contains 0" in str(err.value)


def test_a_level_set_is_written_short_and_reads_back_the_same():
    assert LevelSet(1, 1).to_json() == [-1, 0, 1]
    assert LevelSet(128, 127).to_json() == {"bits": 8, "signed": True, "symmetric": False}
    assert LevelSet(1, 40000).to_json() == {"min": -1, "max": 40000}  # no 40002-long list
    for levels in (LevelSet(1, 1), LevelSet(128, 127), LevelSet(1, 40000)):
        assert parse_levels(levels.to_json()) == levels


def test_signed_twin_of_an_unsigned_set_has_as_many_levels():
    assert LevelSet(0, 3).as_signed().levels == [-2, -1, 0, 1]
    assert LevelSet(0, 1).as_signed().levels == [-1, 0]
    assert LevelSet(1, 1).as_signed() == LevelSet(1, 1)
    assert from_bits(8).as_signed() == from_bits(8, signed=True)


def minimal(**overrides):
    body = {"name": "j", "dataset": {"name": "synthetic"}, "model": {"arch": "resnet20"}}
    return body | overrides


def test_spec_round_trips_through_json_and_yaml_as_written():
    spec = JobSpec.model_validate(
        minimal(
            quantization={
                "weight": [-1, 0, 1],
                "activation": {"bits": 2},
                "first_last": {"bits": 8, "signed": True},
                "layers": {"layer1.0.*": {"weight": {"bits": 4, "signed": True}}},
            },
            training={"compile": True},  # YAML's unquoted `on`
        )
    )
    dumped = json.loads(spec.model_dump_json())
    assert dumped["quantization"] == {
        "weight": [-1, 0, 1],
        "activation": [0, 1, 2, 3],
        "first_last": {"bits": 8, "signed": True, "symmetric": False},
        "granularity": "per_tensor",
        "layers": {"layer1.0.*": {"weight": list(range(-8, 8))}},  # a side left out stays out
        "activation_init": "lsq",
        "weight_init": "lsq",
        "activation_offset": False,
    }
    assert dumped["training"]["compile"] == "on"
    assert JobSpec.model_validate(dumped) == spec
    again = JobSpec.model_validate(dumped).quantization.layers["layer1.0.*"].given()
    assert again == spec.quantization.layers["layer1.0.*"].given() and "activation" not in again
    assert JobSpec.model_validate(__import__("yaml").safe_load(spec.to_yaml())) == spec


def error_locations(body):
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate(body)
    return {".".join(map(str, e["loc"])) for e in err.value.errors()}


def test_each_offending_field_is_named():
    assert error_locations(
        minimal(
            quantization={"weight": [0, 2, 5], "first_last": "fp"},
            training={"epochs": 0},
            extra=1,
        )
    ) == {"quantization.weight", "quantization.first_last", "training.epochs", "extra"}
    assert error_locations(minimal(dataset={"name": "mnist"}, model={"arch": "vgg"})) == {
        "dataset.name",
        "model.arch",
    }
    # a job of the service is the service's notion (api.service.job_spec widens model.init)
    assert error_locations(minimal(model={"arch": "resnet20", "init": {"job": 3}})) == {
        "model.init"
    }


@pytest.mark.parametrize(
    ("pattern", "field"),
    [
        ("fc", "quantization.layers.fc.weight"),
        ("layer1.0.*", 'quantization.layers."layer1.0.*".weight'),  # its dots are not fields
        ("Conv*", 'quantization.layers."Conv*".weight'),  # nor is it a union's tag
        ("x" * 150, f'quantization.layers."{"x" * 77}...".weight'),  # cut, then quoted
        ("0", 'quantization.layers."0".weight'),  # not a list's index
        ('a"' * 100, 'quantization.layers."' + 'a\\"' * 38 + 'a..."' + ".weight"),
    ],
)
def test_a_layer_pattern_is_named_as_written_in_its_errors(pattern, field):
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate(minimal(quantization={"layers": {pattern: {"weight": "x"}}}))
    [(name, _)] = describe_errors(err.value, JobSpec)
    assert name == field
    pattern_as_named = name.removeprefix("quantization.layers.").removesuffix(".weight")
    assert isinstance(json.loads(pattern_as_named) if '"' in name else pattern_as_named, str)


def test_an_error_that_quotes_a_huge_value_stays_small():
    huge = {"\\" * 125_000: 1}  # a level set's unknown key
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate(minimal(quantization={"weight": huge, "first_last": "\\" * 125_000}))
    described = describe_errors(err.value, JobSpec)
    assert [f for f, _ in described] == ["quantization.weight", "quantization.first_last"]
    assert all(len(message) < 1000 for _, message in described), described


def test_a_warm_up_longer_than_the_training_is_refused():
    assert error_locations(minimal(training={"epochs": 2, "warmup_epochs": 2.5})) == {
        "training.warmup_epochs"
    }
    with pytest.raises(ValidationError, match=r"2.5 epochs is longer than the training's 2"):
        JobSpec.model_validate(minimal(training={"epochs": 2, "warmup_epochs": 2.5}))
    assert JobSpec.model_validate(minimal(training={"epochs": 2, "warmup_epochs": 2})).training


def test_the_json_schema_documents_level_sets():
    schema = json.dumps(JobSpec.model_json_schema())
    assert "contiguous integers" in schema and "bits" in schema


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_a_valid_spec(path):
    spec = JobSpec.from_file(path)
    assert spec.name == path.stem


def test_examples_cover_every_row_of_both_results_tables():
    rows = {}
    for path in EXAMPLES:
        s = JobSpec.from_file(path)
        if s.quantization.enabled and s.dataset.name in ("cifar10", "imagenet"):
            q = s.quantization
            act = tuple(q.activation.levels) if q.activation else None
            rows[(s.dataset.name, q.first_last == "same", act)] = s
    for dataset in ("cifar10", "imagenet"):
        for quan_lr in (False, True):
            for act in (None, (0, 1, 2, 3)):
                s = rows[(dataset, quan_lr, act)]
                assert s.quantization.weight.levels == [-1, 0, 1]
                assert (s.training.lr, s.training.epochs, s.training.momentum) == (0.01, 90, 0.9)
                assert s.training.scheduler == "cosine"
    assert {p.stem for p in EXAMPLES} >= {"cifar10-resnet20-fp", "imagenet-resnet18-fp"}


def test_a_version_1_spec_keeps_running_without_batch_norm_reestimation() -> None:
    from lsq.spec import SPEC_VERSION, upgrade_spec

    v1 = {"name": "old", "dataset": {"name": "synthetic"}, "model": {"arch": "resnet20"}}
    assert JobSpec.model_validate(v1).training.bn_reestimate == 100  # version 2's default
    assert JobSpec.model_validate(upgrade_spec(v1, 1)).training.bn_reestimate == 0
    chosen = {**v1, "training": {"bn_reestimate": 50, "lr": 0.1}}
    assert upgrade_spec(chosen, 1)["training"] == {"bn_reestimate": 50, "lr": 0.1}
    assert upgrade_spec(v1, SPEC_VERSION) == v1


def test_a_version_2_spec_selects_the_same_layers_under_the_standard_names() -> None:
    """ResNet-20's blocks were `layers.0` to `layers.8`; they are `layer1.0` to `layer3.2`."""
    from lsq.spec import upgrade_spec

    v2 = {
        "name": "old", "dataset": {"name": "synthetic"}, "model": {"arch": "resnet20"},
        "quantization": {"weight": [-1, 0, 1], "layers": {
            "layers.[0-2].*": {"weight": None},  # the first stage
            "layers.4.conv1": {"weight": {"bits": 4, "signed": True}},
            "*.conv2": {"activation": None},  # the same layers under both names: kept
        }},
        "sensitivity": {"layers": ["layers.8.*", "fc"]},
    }  # fmt: skip
    with pytest.raises(ValidationError, match="'layers.4.conv1' are each the first pattern") as e:
        JobSpec.model_validate(v2)  # a spec file is read at the current version: a hint
    assert "layers.N is layer{N // n + 1}.{N % n}" in str(e.value)
    spec = JobSpec.model_validate(upgrade_spec(v2, 2) | {"sensitivity": None})
    stage1 = [f"layer1.{b}.conv{c}" for b in range(3) for c in (1, 2)]
    assert list(spec.quantization.layers) == [*stage1, "layer2.1.conv1", "*.conv2"]
    assert upgrade_spec(v2, 2)["sensitivity"]["layers"] == [
        "layer3.2.conv1",
        "layer3.2.conv2",
        "fc",
    ]
    other = v2 | {"model": {"arch": "mobilenet_v2"}}
    assert upgrade_spec(other, 2) == other  # only the CIFAR ResNets were renamed
