"""A user's ONNX classifier as a trainable torch module (onnx2torch), after checks that a
hostile file needs: nothing outside the file is read (external data is refused), every tensor
holds the bytes its shape declares, control flow and ops onnx2torch cannot convert are refused
by name, and the graph must take one square image batch (N, C, H, H) and give (N, classes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, external_data_helper, helper
from torch import nn

from .file_kinds import ONNX, NotAModel, kind_of
from .text import listed, show

MAX_NODES = 100_000
MAX_SIDE = 4096  # pixels of the input image
MAX_CHANNELS = 16
MAX_DIM = 2**31  # any declared dimension
MAX_CLASSES = 100_000
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Signature:
    """What an ONNX classifier takes and gives: images of `channels` x `image_size` x
    `image_size`, `classes` logits; and its ops, by count."""

    channels: int
    image_size: int
    classes: int
    ops: dict[str, int]


def read_model(path: str | Path) -> onnx.ModelProto:
    """The ONNX model in `path`, parsed but not trusted (check() before use)."""
    path = Path(path)
    with path.open("rb") as f:
        kind = kind_of(f.read(16), path.stat().st_size)
    if kind != ONNX:
        raise NotAModel(f"{path.name} is {kind} weights, not an ONNX model")
    try:  # protobuf's parser bounds nesting (a nesting bomb is a parse error)
        return onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's errors have no common base
        raise NotAModel(f"not a readable ONNX model: {str(e)[:300]}") from None


def check(model: onnx.ModelProto) -> Signature:
    """The model's Signature, or NotAModel naming the first thing that keeps it from being
    trained here."""
    graph = model.graph
    if len(graph.node) > MAX_NODES:
        raise NotAModel(f"{len(graph.node):,} nodes; at most {MAX_NODES:,}")
    constants = [
        a.t for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    for tensor in [*graph.initializer, *constants]:
        _check_tensor(tensor)
    if model.functions:
        raise NotAModel(f"{len(model.functions)} model-local functions: not trained here")
    for node in graph.node:
        # Only the top level is read: a graph nested in an attribute (however deep, as in a
        # nesting bomb) is refused without walking it.
        if any(a.HasField("g") or len(a.graphs) for a in node.attribute):
            raise NotAModel(
                f"op {node.op_type} ({show(node.name)}) holds a subgraph: control flow is "
                "not trained here"
            )
    channels, side = _image_input(graph)
    return Signature(channels, side, _logits(graph), _ops(model))


def _check_tensor(t: TensorProto) -> None:
    name = show(t.name)
    if external_data_helper.uses_external_data(t):
        where = next((e.value for e in t.external_data if e.key == "location"), "?")
        raise NotAModel(
            f"tensor {name} keeps its data in another file ({show(where)}): only files with "
            "every tensor inside are read (onnx.save(model, path, save_as_external_data=False))"
        )
    if len(t.dims) > 8 or any(not 0 <= d < MAX_DIM for d in t.dims):
        raise NotAModel(f"tensor {name} declares dimensions {show(list(t.dims))}")
    try:
        item = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except KeyError:
        raise NotAModel(f"tensor {name} has an unknown data type {t.data_type}") from None
    count = math.prod(t.dims)
    field = helper.tensor_dtype_to_field(t.data_type) if not t.HasField("raw_data") else None
    held = len(t.raw_data) // item if field is None else len(getattr(t, field))
    if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) and field is not None:
        held //= 2
    if held < count:
        raise NotAModel(
            f"tensor {name} declares {count:,} values of {list(t.dims)} and holds {held:,}"
        )


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _image_input(graph: onnx.GraphProto) -> tuple[int, int]:
    constant = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constant]
    if len(inputs) != 1:
        names = listed([show(i.name) for i in inputs])
        raise NotAModel(f"{len(inputs)} inputs ({names}): one image input is trained here")
    value = inputs[0]
    dims = _dims(value)
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or value.type.tensor_type.elem_type not in FLOATS or len(dims) != 4:
        raise NotAModel(
            f"input {show(value.name)} is {kind or 'untyped'} of shape {show(dims)}: an image "
            "input is a float tensor (N, C, H, W)"
        )
    _, c, h, w = dims
    if c is None or h is None or h != w or not 1 <= c <= MAX_CHANNELS or not 1 <= h <= MAX_SIDE:
        raise NotAModel(
            f"input {show(value.name)} has shape {show(dims)}: images are trained here as "
            f"(N, C, H, H) with C and H fixed, 1 to {MAX_CHANNELS} channels and 1 to {MAX_SIDE} px"
        )
    return c, h


def _logits(graph: onnx.GraphProto) -> int:
    if len(graph.output) != 1:
        raise NotAModel(f"{len(graph.output)} outputs: a classifier gives one, its logits")
    dims = _dims(graph.output[0])
    if len(dims) != 2 or dims[1] is None or not 2 <= dims[1] <= MAX_CLASSES:
        raise NotAModel(
            f"output {show(graph.output[0].name)} has shape {show(dims)}: a classifier's is "
            f"(N, classes), with 2 to {MAX_CLASSES:,} classes"
        )
    return dims[1]


# Ops whose newer versions only admit more data types (float8, int4, strings...) than the
# version onnx2torch converts: the same computation on a float classifier. Exporters write
# them at opset 19 to 21 (torch's default is 20). Pad 19 adds mode 'wrap', which onnx2torch's
# converter refuses by name.
SAME_AS_OLDER = {
    "Cast": 13, "ConstantOfShape": 9, "Identity": 16, "Pad": 13, "Reshape": 14, "Shape": 15,
    "Unsqueeze": 13, "Flatten": 13, "Transpose": 13, "Constant": 13, "Equal": 13,
}  # fmt: skip


@functools.cache
def _converters() -> Callable[[str, int, str], object]:
    """onnx2torch's converter lookup, taught the newer versions of SAME_AS_OLDER."""
    from onnx2torch.node_converters import registry

    for op, older in SAME_AS_OLDER.items():
        converter = registry.get_converter(op, older)
        for version in (19, 20, 21):
            since = onnx.defs.get_schema(op, max_inclusive_version=version).since_version
            key = registry.OperationDescription(domain="", operation_type=op, version=since)
            if since > older and key not in registry._CONVERTER_REGISTRY:
                registry.add_converter(operation_type=op, version=since)(converter)
    return registry.get_converter


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    get_converter = _converters()

    opsets = {o.domain or "": o.version for o in model.opset_import}
    counts: dict[str, int] = {}
    missing = set()
    for node in model.graph.node:
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        try:
            get_converter(node.op_type, opsets.get(domain, 1), domain or "")
        except NotImplementedError:
            missing.add(f"{show(node.op_type)} ({domain or 'ai.onnx'} opset {opsets.get(domain)})")
    if missing:
        raise NotAModel(
            f"op(s) {listed(sorted(missing))} cannot be made trainable here (onnx2torch has no "
            "converter for them)"
        )
    return counts


def _inline_aliases(model: onnx.ModelProto) -> None:
    """Identity nodes of an initializer (torch's exporter writes one per repeated weight)
    become initializers of their own: onnx2torch reads weights only from initializers."""
    tensors = {t.name: t for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in tensors:
            alias = TensorProto()
            alias.CopyFrom(tensors[node.input[0]])
            alias.name = node.output[0]
            model.graph.initializer.append(alias)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def load_onnx(path: str | Path, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """The ONNX classifier in `path` as a trainable module for images of `in_channels` x
    `image_size` px in `num_classes` classes (ValueError when it takes or gives others)."""
    from onnx2torch import convert

    model = read_model(path)
    sig = check(model)
    wanted = (in_channels, image_size, num_classes)
    if (sig.channels, sig.image_size, sig.classes) != wanted:
        raise ValueError(
            f"the ONNX model takes {sig.channels} x {sig.image_size} x {sig.image_size} images "
            f"into {sig.classes} classes; the data is {in_channels} x {image_size} x "
            f"{image_size} in {num_classes} (dataset.image_size, dataset.channels)"
        )
    _inline_aliases(model)
    _converters()
    try:
        module = convert(model)
    except Exception as e:  # noqa: BLE001 - a converter's failure is the file's problem
        raise ValueError(f"the ONNX model could not be converted: {str(e)[:300]}") from None
    if not any(isinstance(m, nn.Conv2d | nn.Linear) for m in module.modules()):
        raise ValueError("the ONNX model has no Conv or Gemm/MatMul layer to quantize")
    return module.train()


def measure(module: nn.Module, channels: int, image_size: int) -> dict[str, int]:
    """Multiply-accumulates of one forward pass of one image, the values its Conv2d and
    Linear layers output (lsq.cost's Tally), and its parameters."""
    from torch.utils.flop_counter import FlopCounterMode

    outputs = 0

    def count(_: nn.Module, __: object, out: torch.Tensor) -> None:
        nonlocal outputs
        outputs += out[0].numel()

    layers = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    hooks = [m.register_forward_hook(count) for m in layers]
    flops = FlopCounterMode(display=False)
    with torch.no_grad(), flops:
        out = module.eval()(torch.zeros(1, channels, image_size, image_size))
    for h in hooks:
        h.remove()
    if out.dim() != 2:
        raise ValueError(f"the ONNX model gives {list(out.shape)}, not (N, classes)")
    params = sum(p.numel() for p in module.parameters())
    return {"macs": flops.get_total_flops() // 2, "outputs": outputs, "parameters": params}
