"""Model files a user sends, checked in the core: what they are by content, safetensors headers
and ONNX graphs that a hostile file would bend, and both kinds trained end to end."""

from __future__ import annotations

import json
from pathlib import Path

import model_files as mf
import pytest
import torch

from lsq import checkpoint, model_file, weights
from lsq.file_kinds import NotAModel, kind_of
from lsq.networks import build_model
from lsq.onnx_import import check, load_onnx, read_model


def refusal(path: Path, **shape) -> str:
    """What lsq.model_file says of `path` (the service's 422 message)."""
    with pytest.raises((NotAModel, ValueError)) as e:
        model_file.inspect(path, shape.get("arch"), 10, 3, 16)
    return str(e.value)


def test_kinds_come_from_content(tmp_path: Path) -> None:
    assert kind_of(mf.weights(tmp_path / "w.bin").read_bytes()[:16], 10_000) == "safetensors"
    assert kind_of(mf.onnx_classifier(tmp_path / "m.bin").read_bytes()[:16], 10_000) == "onnx"
    with pytest.raises(NotAModel, match="pickle.*never read.*safetensors.torch"):
        kind_of(mf.pickle_checkpoint(tmp_path / "a.pt").read_bytes()[:16], 1000)
    with pytest.raises(NotAModel, match="pickle"):
        kind_of(mf.plain_pickle(tmp_path / "b.pkl").read_bytes()[:16], 1000)
    with pytest.raises(NotAModel, match="neither safetensors"):
        kind_of(mf.wrong_magic(tmp_path / "c").read_bytes()[:16], 106)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (mf.safetensors_claims_more, "describes 4,194,304 bytes of tensor data, the file holds 16"),
        (mf.safetensors_overlapping, "tensor 'b' starts at byte 8 and overlaps"),
    ],
)
def test_hostile_safetensors_headers(tmp_path: Path, make, problem: str) -> None:
    with pytest.raises(NotAModel, match=problem):
        weights.read_header(make(tmp_path / "w.safetensors"))


def test_a_header_longer_than_the_file_and_a_bad_entry(tmp_path: Path) -> None:
    good = mf.weights(tmp_path / "w.safetensors")
    with pytest.raises(NotAModel, match="the file holds 537,408 .truncated"):
        weights.read_header(mf.truncated(good, tmp_path / "half.safetensors"))
    long = tmp_path / "long.safetensors"
    long.write_bytes((10**6).to_bytes(8, "little") + b'{"a": 1}')
    with pytest.raises(NotAModel, match="header of 1,000,000 bytes in a file of 16: truncated"):
        weights.read_header(long)
    bad = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}
    with pytest.raises(
        NotAModel, match=r"shape \[2, 2\] of F32 needs 16 bytes, its offsets give 8"
    ):
        weights.read_header(mf.safetensors_raw(tmp_path / "s", bad, b"\0" * 8))
    odd = {"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}
    with pytest.raises(NotAModel, match="unknown dtype 'F33'"):
        weights.read_header(mf.safetensors_raw(tmp_path / "t", odd, b"\0" * 4))


def test_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    path = mf.weights(tmp_path / "w.safetensors")
    problem = refusal(path, arch="resnet32")
    assert "missing 72 tensor(s): layer1.3.conv1.weight" in problem
    message = refusal(mf.weights(tmp_path / "v.safetensors", channels=1), arch="resnet20")
    assert "'conv1.weight' is [16, 1, 3, 3], the network's is [16, 3, 3, 3]" in message
    found = model_file.inspect(path, "resnet20", 10, 3, 16)
    assert found == {"tensors": len(build_model("resnet20", 10, 3, False, 16).state_dict()),
                     "parameters": found["parameters"]}  # fmt: skip
    assert found["parameters"] > 270_000


def test_safetensors_weights_start_a_network(tmp_path: Path) -> None:
    path = mf.weights(tmp_path / "w.safetensors")
    model = build_model("resnet20", 10, 3, False, 16)
    checkpoint.load_init_weights(model, path)
    torch.manual_seed(0)
    same = build_model("resnet20", 10, 3, False, 16)
    assert torch.equal(model.conv1.weight, same.conv1.weight)
    with pytest.raises(ValueError, match="does not fit this network: missing"):
        checkpoint.load_init_weights(build_model("resnet32", 10, 3, False, 16), path)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (mf.onnx_external_data, "keeps its data in another file .*etc/passwd"),
        (mf.onnx_huge_dims, r"declares dimensions \[1099511627776, 1099511627776\]"),
        (mf.onnx_short_tensor, r"declares 32 values of \[2, 1, 4, 4\] and holds 3"),
        (mf.onnx_unsupported_op, "op.*'StringNormalizer'.*cannot be made trainable"),
        (mf.onnx_two_inputs, r"2 inputs \('x', 'z'\): one image input"),
        (mf.onnx_text_input, "an image input is a float tensor"),
        (mf.onnx_nesting_bomb, "not a readable ONNX model: .*MaxDepth"),
    ],
)
def test_hostile_onnx_files(tmp_path: Path, make, problem: str) -> None:
    with pytest.raises(NotAModel, match=problem):
        check(read_model(make(tmp_path / "m.onnx")))


def test_an_onnx_classifier_converts_to_the_same_function(tmp_path: Path) -> None:
    path = mf.onnx_classifier(tmp_path / "m.onnx", channels=1, size=28)
    sig = check(read_model(path))
    assert (sig.channels, sig.image_size, sig.classes) == (1, 28, 10)
    torch.manual_seed(0)
    original = build_model("resnet20", 10, 1, False, 28).eval()
    module = load_onnx(path, 10, 1, 28).eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(module(x), original(x), atol=1e-4)
    with pytest.raises(ValueError, match="takes 1 x 28 x 28 images into 10 classes; the data is 3"):
        load_onnx(path, 10, 3, 28)
    found = json.loads(json.dumps(model_file.inspect(path, None, 0, 0, 0)))
    # resnet20 at 28 px: the count lsq.cost makes from the layers' shapes
    from lsq.cost import network_cost

    assert found["macs"] == network_cost("resnet20", 28, 1, 10).macs
    assert found["ops"]["Conv"] == 19 and found["ops"]["Gemm"] == 1


def test_torch_default_exporter_files_are_taken(tmp_path: Path) -> None:
    """The dynamo exporter writes opset 18+ (ReduceMean's axes as an input, Reshape with
    allowzero); exported with its batch fixed, the model is refused before training."""
    path = mf.onnx_dynamo(tmp_path / "m.onnx")
    torch.manual_seed(0)
    original = build_model("resnet20", 10, 1, False, 28).eval()
    x = torch.randn(5, 1, 28, 28)
    assert torch.allclose(load_onnx(path, 10, 1, 28).eval()(x), original(x), atol=1e-4)
    fixed = mf.onnx_dynamo(tmp_path / "fixed.onnx", batch=False)
    with pytest.raises(NotAModel, match="exported with a fixed batch size"):
        model_file.inspect(fixed, None, 0, 0, 0)


def test_sizes_from_the_images_values_and_huge_costs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotAModel, match="takes a size computed from the image's values"):
        check(read_model(mf.onnx_sized_by_values(tmp_path / "a.onnx")))
    with pytest.raises(NotAModel, match=r"declare 2.32e\+11 multiply-accumulates per image"):
        check(read_model(mf.onnx_too_costly(tmp_path / "b.onnx")))


def test_safetensors_headers_read_as_safetensors_reads_them(tmp_path: Path) -> None:
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    utf16 = tmp_path / "utf16.safetensors"
    raw = json.dumps({"w": entry}).encode("utf-16-le")  # starts with "{", as UTF-8 would
    utf16.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    with pytest.raises(NotAModel, match="not UTF-8 JSON"):
        weights.read_header(utf16)
    meta = {"__metadata__": {"n": 1}, "w": entry}
    with pytest.raises(NotAModel, match="__metadata__ is not an object of strings"):
        weights.read_header(mf.safetensors_raw(tmp_path / "m", meta, b"\0" * 4))
    twice = tmp_path / "twice.safetensors"
    raw = b'{"w": %s, "w": %s}' % (json.dumps(entry).encode(), json.dumps(entry).encode())
    twice.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    with pytest.raises(NotAModel, match="a key repeats"):
        weights.read_header(twice)
