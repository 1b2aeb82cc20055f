"""What a model file is, from its first bytes alone (torch-free: the API tells an upload's kind
while it streams in). A file a user sends is data: its name and a form field never decide."""

from __future__ import annotations

import json
import struct

HEAD_BYTES = 16  # enough to tell every kind below
SAFETENSORS, ONNX = "safetensors", "onnx"
MAX_HEADER_BYTES = 100 << 20  # safetensors' own reader refuses a header over 100 MB

# How to turn a pickled checkpoint into the file this service reads (run it where the pickle's
# origin is trusted: loading a pickle runs its code).
TO_SAFETENSORS = (
    'python -c "import torch, safetensors.torch as st; '
    "sd = torch.load('model.pt', map_location='cpu', weights_only=True); "
    "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\""
)


class NotAModel(ValueError):
    """A file that is no model this service reads, with why."""


def kind_of(head: bytes, size: int) -> str:
    """SAFETENSORS or ONNX for a file of `size` bytes that starts with `head` (at least
    HEAD_BYTES of it, or all of a shorter file); NotAModel says what it is instead."""
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05":
        raise NotAModel(
            "this is a PyTorch checkpoint (.pt/.pth: a pickle, or a zip of one); a pickle "
            "runs code when loaded, so it is never read here. Save its state dict as "
            f"safetensors and send that: {TO_SAFETENSORS}"
        )
    if size >= 9 and head[8:9] == b"{":
        (header,) = struct.unpack("<Q", head[:8])
        if header > min(size - 8, MAX_HEADER_BYTES):
            raise NotAModel(
                f"safetensors header of {header:,} bytes in a file of {size:,}: truncated or "
                "not a safetensors file"
            )
        return SAFETENSORS
    if head[:1] == b"\x08":  # ModelProto's field 1 (ir_version, a varint) comes first
        return ONNX
    if size < 9:
        raise NotAModel(f"{size} bytes: too short for any model file (truncated?)")
    raise NotAModel(
        "neither safetensors weights (8 bytes of header length, then '{') nor an ONNX model "
        "(a protobuf ModelProto); a truncated file reads this way too"
    )


def parse_json_header(raw: bytes) -> dict:
    """A safetensors header's JSON object (NotAModel if it is none)."""
    try:  # as safetensors' own reader: UTF-8 only, every key once
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_once)
    except (UnicodeDecodeError, ValueError) as e:
        raise NotAModel(f"safetensors header is not UTF-8 JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise NotAModel("safetensors header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise NotAModel("safetensors __metadata__ is not an object of strings")
    return header


def _once(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key repeats")
    return dict(pairs)
