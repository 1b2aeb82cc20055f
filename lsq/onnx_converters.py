"""What onnx2torch (1.5.15, its latest) lacks for the files today's exporters write: converters
for the newer versions of ops it knows, taught to its registry once (`converters()`).

- Ops whose versions 19 to 21 only admit more data types (float8, int4, strings...) than the
  version onnx2torch converts: the same computation on a float classifier (SAME_AS_OLDER).
  torch's exporter writes opset 20 by default. Pad 19 adds mode 'wrap', which onnx2torch's
  converter refuses by name.
- Reshape with allowzero=1 (the dynamo exporter writes it: a 0 in the shape is a 0, not "keep
  that dimension"), from opset 14 on.
- The reductions of opset 18, whose axes became an input instead of an attribute
  (torch.onnx.export's dynamo exporter writes ResNets' global pooling as ReduceMean-18): read
  from a constant, as onnx2torch does for ReduceSum-13; axes computed at run time are refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import onnx

SAME_AS_OLDER = {
    "Cast": 13, "ConstantOfShape": 9, "Identity": 16, "Pad": 13, "Shape": 15,
    "Unsqueeze": 13, "Flatten": 13, "Transpose": 13, "Constant": 13, "Equal": 13,
}  # fmt: skip
REDUCTIONS_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                 "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")  # fmt: skip


@functools.cache
def converters() -> Callable[[str, int, str], Any]:
    """onnx2torch's converter lookup, with the converters above registered."""
    from onnx2torch.node_converters import registry

    def teach(op: str, version: int, converter: Any) -> None:
        key = registry.OperationDescription(domain="", operation_type=op, version=version)
        if key not in registry._CONVERTER_REGISTRY:  # a later onnx2torch may have its own
            registry.add_converter(operation_type=op, version=version)(converter)

    for op, older in SAME_AS_OLDER.items():
        converter = registry.get_converter(op, older)
        for version in (19, 20, 21):
            since = onnx.defs.get_schema(op, max_inclusive_version=version).since_version
            if since > older:
                teach(op, since, converter)
    for op in REDUCTIONS_18:
        teach(op, 18, _reduction_with_axes_input)
    for version in (14, 19, 21):  # onnx2torch's own Reshape-14 refuses allowzero=1: replaced
        key = registry.OperationDescription(domain="", operation_type="Reshape", version=version)
        registry._CONVERTER_REGISTRY[key] = _reshape
    return registry.get_converter


class _Reshape:
    """onnx2torch's Reshape, and ONNX's allowzero=1: every value of the shape taken as it is."""

    @staticmethod
    def module(allowzero: bool) -> Any:
        import torch
        from onnx2torch.node_converters.reshape import OnnxReshape

        class LiteralReshape(torch.nn.Module):
            def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
                return torch.reshape(x, torch.Size(shape.tolist()))

        return LiteralReshape() if allowzero else OnnxReshape()


def _reshape(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    module = _Reshape.module(node.attributes.get("allowzero", 0) == 1)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _reduction_with_axes_input(node: Any, graph: Any) -> Any:
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = get_const_value(node.input_values[1], graph).tolist()
        except KeyError:
            raise NotImplementedError(
                f"{node.operation_type} with axes computed at run time"
            ) from None
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        raise NotImplementedError(f"{node.operation_type} with noop_with_empty_axes")
    module = OnnxReduceStaticAxes(node.operation_type, axes, node.attributes.get("keepdims", 1))
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)
