"""Model files for the upload tests, good and hostile, written in their real formats."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, external_data_helper, helper
from safetensors.torch import save_file

from lsq.networks import build_model


def onnx_classifier(path: Path, channels: int = 3, size: int = 16, classes: int = 10) -> Path:
    """A torchvision-style network (our resnet20) exported to ONNX as a user would."""
    torch.manual_seed(0)
    model = build_model("resnet20", classes, channels, False, size).eval()
    torch.onnx.export(
        model, (torch.zeros(1, channels, size, size),), str(path), dynamo=False,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip
    return path


def weights(path: Path, arch: str = "resnet20", channels: int = 3, size: int = 16) -> Path:
    torch.manual_seed(0)
    save_file(build_model(arch, 10, channels, False, size).state_dict(), str(path))
    return path


def _tiny_graph(
    weight: TensorProto, inputs: list | None = None, op: str = "Conv"
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    node = helper.make_node(op, ["x", weight.name], ["y"])
    graph = helper.make_graph([node], "g", inputs or [x], [y], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def onnx_external_data(path: Path) -> Path:
    """A weight whose bytes are 'in' a file outside: path traversal."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 4, 4], b"\0" * 128, raw=True)
    external_data_helper.set_external_data(w, location="../../../../etc/passwd")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    return _save(_tiny_graph(w), path)


def onnx_huge_dims(path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 4, 4], [0.0] * 32)
    w.ClearField("dims")
    w.dims.extend([1 << 40, 1 << 40])
    return _save(_tiny_graph(w), path)


def onnx_short_tensor(path: Path) -> Path:
    """A tensor that declares 2 x 1 x 4 x 4 values and holds 3."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 4, 4], [0.0] * 32)
    del w.float_data[3:]
    return _save(_tiny_graph(w), path)


def onnx_unsupported_op(path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 4, 4], [0.0] * 32)
    return _save(_tiny_graph(w, op="StringNormalizer"), path)


def onnx_two_inputs(path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 4, 4], [0.0] * 32)
    a = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    b = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])
    return _save(_tiny_graph(w, inputs=[a, b]), path)


def onnx_text_input(path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 4, 4], [0.0] * 32)
    text = helper.make_tensor_value_info("x", TensorProto.STRING, [1, 8])
    return _save(_tiny_graph(w, inputs=[text]), path)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def onnx_nesting_bomb(path: Path, depth: int = 3000) -> Path:
    """Graphs inside node attributes inside graphs, 3000 deep (protobuf bytes, by hand)."""
    inner = b""
    for _ in range(depth):  # a node's attribute (5) > its graph g (6) > that graph's node (1)
        inner = _field(5, _field(6, _field(1, inner)))
    path.write_bytes(b"\x08\x08" + _field(7, _field(1, inner)))
    return path


def safetensors_raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def safetensors_claims_more(path: Path) -> Path:
    """A header that says 4 MB of tensor data follow; 16 bytes do."""
    entry = {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4 << 20]}
    return safetensors_raw(path, {"w": entry}, b"\0" * 16)


def safetensors_overlapping(path: Path) -> Path:
    a = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    b = {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}
    return safetensors_raw(path, {"a": a, "b": b}, b"\0" * 24)


def truncated(source: Path, path: Path) -> Path:
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return path


def wrong_magic(path: Path) -> Path:
    path.write_bytes(b"GIF89a" + b"\0" * 100)
    return path


def pickle_checkpoint(path: Path) -> Path:
    """What torch.save writes (a zip holding a pickle)."""
    torch.save({"w": torch.zeros(2)}, path)
    return path


def plain_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"w": [0.0, 1.0]}, protocol=4))
    return path


def onnx_dynamo(path: Path, batch: bool = True) -> Path:
    """Our resnet20 (1 x 28 x 28) through torch's default exporter (dynamo) as its docs show:
    weights inside the file, the batch dynamic (or, `batch` False, fixed at 2)."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1, False, 28).eval()
    dynamic = ({0: torch.export.Dim("batch")},) if batch else None
    torch.onnx.export(model, (torch.zeros(2, 1, 28, 28),), str(path), external_data=False,
                      dynamic_shapes=dynamic)  # fmt: skip
    return path


def onnx_sized_by_values(path: Path) -> Path:
    """A buffer as long as the brightest pixel says (ReduceMax, Cast, ConstantOfShape)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["n"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["n", "one"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("Flatten", ["x"], ["y"]),
    ]
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "g", [x], [y], [one])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def onnx_too_costly(path: Path, layers: int = 6) -> Path:
    """Six 16-channel 3 x 3 convolutions at 4096 px, one weight shared: a small file that
    declares 2.3e11 multiply-accumulates per image."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4096, 4096])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 16, 3, 3], [0.0] * 16 * 16 * 9)
    names = ["x", *(f"c{i}" for i in range(layers))]
    nodes = [helper.make_node("Conv", [a, "w"], [b], pads=[1, 1, 1, 1])
             for a, b in zip(names, names[1:], strict=False)]  # fmt: skip
    nodes.append(helper.make_node("GlobalAveragePool", [names[-1]], ["p"]))
    nodes.append(helper.make_node("Flatten", ["p"], ["y"]))
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
