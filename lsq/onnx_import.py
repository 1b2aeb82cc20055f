"""A user's ONNX classifier as a trainable torch module (onnx2torch), after checks that a
hostile file needs: nothing outside the file is read (external data is refused), every tensor
holds the bytes its shape declares, control flow and ops onnx2torch cannot convert are refused
by name, and the graph must take one square image batch (N, C, H, H) and give (N, classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, external_data_helper, helper
from torch import nn

from .file_kinds import ONNX, NotAModel, kind_of
from .onnx_converters import converters
from .text import listed, show

MAX_NODES = 100_000
MAX_SIDE = 4096  # pixels of the input image
MAX_CHANNELS = 16
MAX_DIM = 2**31  # any declared dimension
MAX_CLASSES = 100_000
MAX_MACS = 2 * 10**11  # per image: above every torchvision classifier at 224 px
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
    _sizes_from_shapes(graph)
    signature = Signature(channels, side, _logits(graph), _ops(model))
    if (macs := declared_macs(model)) > MAX_MACS:
        raise NotAModel(
            f"its convolutions and matrix products declare {macs:.3g} multiply-accumulates per "
            f"image, over the {MAX_MACS:.0e} taken here (vit_h_14 at 224 px: 1.7e+11)"
        )
    return signature


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


# Inputs that size what an op allocates. Computed from the image's values (not only from its
# shape, through Shape or Size), they would make the memory a model takes depend on its data:
# a blank image at upload would say nothing of a real one in training.
SIZING = {
    "ConstantOfShape": (0,), "Expand": (1,), "Reshape": (1,), "Tile": (1,), "Range": (0, 1, 2),
    "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1,), "Slice": (1, 2, 3, 4), "TopK": (1,),
    "OneHot": (1,),
}  # fmt: skip
SIZED_BY_VALUES = {"NonZero", "Compress", "Unique", "NonMaxSuppression"}
SHAPE_ONLY = {"Shape", "Size"}


def _sizes_from_shapes(graph: onnx.GraphProto) -> None:
    """NotAModel when an op would allocate by the image's values (SIZING), not its shape."""
    constant = {t.name for t in graph.initializer}
    from_values = {i.name for i in graph.input if i.name not in constant}
    for node in graph.node:  # in topological order, as ONNX requires
        if node.op_type in SIZED_BY_VALUES:
            raise NotAModel(f"op {node.op_type} sizes its output by the data: not trained here")
        for i in SIZING.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] in from_values:
                raise NotAModel(
                    f"op {node.op_type} ({show(node.name)}) takes a size computed from the "
                    "image's values: what it allocates cannot be bounded before training"
                )
        if node.op_type not in SHAPE_ONLY and any(i in from_values for i in node.input):
            from_values.update(node.output)


def declared_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates per image of the Conv, Gemm and MatMul nodes, from the shapes ONNX's
    own inference gives (before anything runs: the check then runs the model); 0 where the
    shapes are unknown."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - inference refuses some valid graphs: measured later
        return 0
    shapes = {v.name: _dims(v) for v in [*inferred.value_info, *inferred.output]}
    shapes |= {t.name: list(t.dims) for t in inferred.initializer}
    total = 0
    for node in inferred.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
        if not out or not weight or None in out[1:] or None in weight:
            continue
        per_output = math.prod(weight[1:]) if node.op_type == "Conv" else weight[0]
        total += math.prod(out[1:]) * per_output
    return total


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


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    get_converter = converters()

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
    converters()
    try:
        module = convert(model)
    except Exception as e:  # noqa: BLE001 - a converter's failure is the file's problem
        raise ValueError(f"the ONNX model could not be converted: {str(e)[:300]}") from None
    if not any(isinstance(m, nn.Conv2d | nn.Linear) for m in module.modules()):
        raise ValueError("the ONNX model has no Conv or Gemm/MatMul layer to quantize")
    return module.train()


def measure(module: nn.Module, channels: int, image_size: int) -> dict[str, int]:
    """Per image: multiply-accumulates of a forward pass, and every value the graph computes on
    the way (what training keeps for the backward pass: lsq.cost's Tally counts outputs);
    and the parameters. Run on a batch of BATCH blank images: a model exported with its batch
    size fixed (to 1 or 2, as export examples are) fails here, not in training."""
    from torch.utils.flop_counter import FlopCounterMode

    values = 0

    def count(_: nn.Module, __: object, out: object) -> None:
        nonlocal values
        values += sum(t.numel() for t in _tensors(out))

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    flops = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), flops:
            out = module.eval()(torch.zeros(BATCH, channels, image_size, image_size))
    except Exception as e:  # noqa: BLE001 - whatever the graph raises is the file's problem
        raise NotAModel(
            f"the model does not run on a batch of {BATCH} images ({type(e).__name__}: "
            f"{str(e)[:200]}): was it exported with a fixed batch size? Export it with a "
            "dynamic one (dynamic_axes, or dynamic_shapes with the dynamo exporter)"
        ) from None
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != BATCH:
        raise NotAModel(f"the model gives {_shape_of(out)} for {BATCH} images, not (N, classes)")
    params = sum(p.numel() for p in module.parameters())
    macs, per_image = flops.get_total_flops() // (2 * BATCH), values // BATCH
    return {"macs": macs, "outputs": per_image, "parameters": params}


BATCH = 3  # images in the check's forward pass


def _tensors(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)] if isinstance(out, tuple | list) else []


def _shape_of(out: object) -> object:
    return list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
