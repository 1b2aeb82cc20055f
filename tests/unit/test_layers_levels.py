"""Per-layer levels (mixed precision): `quantization.layers` patterns, matched against the
networks' real module names; `lsq layers`."""

import pytest
import torch
from jobs import synthetic_spec as spec
from pydantic import ValidationError
from torch import nn

from lsq import cli, export
from lsq.archs import OWN_NAMES, layer_names
from lsq.convert import quantize_as_specified
from lsq.graph import trace
from lsq.networks import build_model
from lsq.spec import JobSpec, QuantizationSpec
from lsq.train import run

W, A = [-1, 0, 1], [0, 1, 2, 3]


SOME_TORCHVISION = ["resnet18", "resnet50", "mobilenet_v3_small", "swin_t", "squeezenet1_1"]


@pytest.mark.parametrize("arch", [*OWN_NAMES, *SOME_TORCHVISION])
def test_the_torch_free_names_are_the_layers_a_forward_runs_in_order(arch: str) -> None:
    with torch.device("meta"):
        model = build_model(arch, 10, 3, image_size=64)
        order = trace(model, torch.zeros(1, 3, 64, 64)).order
    assert layer_names(arch) == order


def levels_of(model: nn.Module, name: str) -> tuple:
    layer = model.get_submodule(name)
    w, a = layer.weight_quantizer, layer.input_quantizer
    return (w and w.levels.levels), (a and a.levels.levels)


def test_overrides_apply_in_order_after_first_last_and_leave_the_other_side() -> None:
    q = QuantizationSpec.model_validate(
        {
            "weight": W,
            "activation": A,
            "first_last": "float",
            "layers": {
                "layer1.0.conv1": {"weight": {"bits": 4, "signed": True}},  # first match wins
                "layer1.0.*": {"activation": None},
                "layer3.2.conv2": {"weight": None, "activation": None},  # all float
                "fc": {"weight": [-1, 0, 1]},  # the last layer: float by first_last, then this
            },
        }
    )
    model = quantize_as_specified(build_model("resnet20", 10, 3), q)
    assert levels_of(model, "layer1.0.conv1") == (list(range(-8, 8)), A)
    assert levels_of(model, "layer1.0.conv2") == (W, None)
    assert levels_of(model, "layer2.1.conv1") == (W, A)
    assert isinstance(model.get_submodule("layer3.2.conv2"), nn.Conv2d)  # left a float conv
    assert levels_of(model, "fc") == (W, None)
    assert isinstance(model.get_submodule("conv1"), nn.Conv2d)
    assert "4 per-layer override(s)" in q.describe()


def test_overrides_alone_quantize_and_the_first_layers_input_stays_signed() -> None:
    q = QuantizationSpec.model_validate({"layers": {"conv1": {"activation": A}}})
    assert q.enabled
    model = quantize_as_specified(build_model("resnet20", 10, 3), q)
    assert levels_of(model, "conv1") == (None, [-2, -1, 0, 1])  # an image is signed
    assert isinstance(model.get_submodule("layer1.0.conv1"), nn.Conv2d)


def test_a_pattern_matching_no_layer_is_refused_naming_it_and_the_layers() -> None:
    body = {
        "name": "x",
        "dataset": {"name": "cifar10"},
        "model": {"arch": "resnet20"},
        "quantization": {"weight": W, "layers": {"layer1.*": {}, "layer4.*": {}, "fc": {}}},
    }
    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate(body)
    message = str(e.value)
    assert "'layer4.*' is the first pattern to match no layer of resnet20" in message
    assert "conv1, layer1.0.conv1" in message and "(20 in all)" in message
    assert "lsq layers resnet20" in message
    body["model"]["arch"] = "resnet18"  # torchvision's four stages: layer1.* to layer4.*
    body["quantization"]["layers"] = {"layer4.*": {}, "fc": {}}
    JobSpec.model_validate(body)


def test_several_patterns_matching_nothing_are_named_with_a_count() -> None:
    patterns = {f"zz{i}": {} for i in range(8)} | {"layer1.*": {}}
    body = {
        "name": "x",
        "dataset": {"name": "cifar10"},
        "model": {"arch": "resnet20"},
        "quantization": {"weight": W, "layers": patterns},
    }
    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate(body)
    assert "'zz0', 'zz1', 'zz2', 'zz3', 'zz4' and 3 more are each the first pattern" in str(e.value)


def test_a_vit_needs_images_its_patches_tile() -> None:
    body = {"name": "x", "dataset": {"name": "fashion-mnist"}, "model": {"arch": "vit_b_16"}}
    with pytest.raises(ValidationError, match="fashion-mnist's 28 px images are no multiple of 16"):
        JobSpec.model_validate(body)
    JobSpec.model_validate(body | {"model": {"arch": "vit_tiny"}})  # 4 x 4 patches tile 28 px
    JobSpec.model_validate(body | {"dataset": {"name": "synthetic", "image_size": 32}})


def test_a_pattern_shadowed_by_an_earlier_one_is_refused() -> None:
    body = {
        "name": "x",
        "dataset": {"name": "cifar10"},
        "model": {"arch": "resnet20"},
        "quantization": {"weight": W, "layers": {"layer1.*": {}, "layer1.0.*": {}}},
    }
    with pytest.raises(ValidationError, match=r"'layer1.0.\*' is the first pattern to match no"):
        JobSpec.model_validate(body)
    body["quantization"]["layers"] = {"layer1.0.*": {}, "layer1.*": {}}  # specific first: fine
    JobSpec.model_validate(body)


def test_overrides_are_bounded_and_strict() -> None:
    many = {f"layer1.{i}.conv1": {} for i in range(65)}
    with pytest.raises(ValidationError, match="at most 64"):
        QuantizationSpec.model_validate({"layers": many})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        QuantizationSpec.model_validate({"layers": {"fc": {"bits": 2}}})
    with pytest.raises(ValidationError):
        QuantizationSpec.model_validate({"layers": {"fc": {"weight": [0, 5]}}})


@pytest.mark.slow
def test_a_mixed_precision_run_exports_each_layers_own_levels(fp_model, tmp_path) -> None:
    quant = {
        "weight": W,
        "activation": A,
        "layers": {"layer1.*": {"weight": {"bits": 4, "signed": True}}},  # the first stage
    }
    run(spec(init=fp_model, quant=quant, epochs=1), tmp_path)
    layers = export.read_integer(tmp_path / "model-int.pt")["layers"]
    assert layers["layer1.0.conv1"]["weight_levels"] == [-8, 7]
    assert layers["layer1.2.conv2"]["weight_levels"] == [-8, 7]
    assert layers["layer2.0.conv1"]["weight_levels"] == [-1, 1]
    codes = layers["layer1.1.conv1"]["weight_codes"]
    assert codes.min() >= -8 and codes.max() <= 7 and len(codes.unique()) > 3
    assert export.check(export.read_integer(tmp_path / "model-int.pt")).violations == []


def test_lsq_layers_lists_names_shapes_parameters_and_measured_inputs(capsys) -> None:
    assert cli.main(["layers", "resnet20", "--dataset", "fashion-mnist"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "resnet20 for fashion-mnist (1 channel(s) of 28 px, 10 classes):"
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == layer_names("resnet20")
    assert rows["conv1"].split()[-3:] == ["144", "signed", "(first)"]  # 16 x 1 x 3 x 3
    assert rows["fc"].split()[-3:] == ["650", "non-negative", "(last)"]  # 10 x 64 + 10
    assert rows["layer2.0.conv1"].split()[-1] == "non-negative"  # after a ReLU
    assert "(32, 16, 3, 3)" in rows["layer2.0.conv1"]
    with pytest.raises(SystemExit, match="'nonet' is no network"):
        cli.main(["layers", "nonet"])


def test_lsq_layers_says_which_layers_stay_float_and_why(capsys) -> None:
    assert cli.main(["layers", "vit_tiny", "--dataset", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert out.count("stays float") == 6  # one attention per encoder layer
    assert "encoder.layers.encoder_layer_0.self_attention: nn.MultiheadAttention" in out
    assert "encoder.layers.encoder_layer_0.mlp.3 " in out and "out_proj" not in out
