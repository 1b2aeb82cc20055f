"""Inspect a model file a user sent, in a process of its own (`python -m lsq.model_file FILE
[--arch A --classes K --channels C --image-size S]`): it prints one JSON object, what the file
is, or {"error": why}. The service runs it under memory and time limits, so a hostile file
costs that process, never the API's.

- safetensors weights: the header checked whole (lsq.weights), then matched by name and shape
  against the arch built (on the meta device: no memory) for those classes and images;
- an ONNX classifier: checked (lsq.onnx_import), converted, run once on one blank image, and
  measured (its cost per image, for the service's limits).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .file_kinds import SAFETENSORS, NotAModel, kind_of


def inspect(path: Path, arch: str | None, classes: int, channels: int, size: int) -> dict[str, Any]:
    """What `path` holds (see the module's docstring); ValueError says why it is refused."""
    with path.open("rb") as f:
        kind = kind_of(f.read(16), path.stat().st_size)
    if kind == SAFETENSORS:
        return _weights(path, arch, classes, channels, size)
    return _onnx(path)


def _weights(path: Path, arch: str | None, classes: int, channels: int, size: int) -> dict:
    import torch
    from safetensors import safe_open

    from . import weights
    from .archs import unknown
    from .networks import build_model

    tensors = weights.read_header(path)
    try:  # and as safetensors' own reader sees it
        with safe_open(path, framework="pt"):
            pass
    except Exception as e:  # noqa: BLE001 - its SafetensorError has no base of ours
        raise NotAModel(f"safetensors' reader refuses it: {str(e)[:300]}") from None
    if arch is None:
        raise ValueError("safetensors weights are checked against a network: give arch")
    if problem := unknown(arch):
        raise ValueError(f"arch: {problem}")
    with torch.device("meta"):
        model = build_model(arch, classes, channels, False, size)
    if problems := weights.mismatches(tensors, model):
        raise ValueError(
            f"these weights do not fit {arch} for {classes} classes of {channels} x {size} x "
            f"{size} images: " + "; ".join(problems)
        )
    parameters = sum(math.prod(t.shape) for t in tensors.values())
    return {"tensors": len(tensors), "parameters": parameters}


def _onnx(path: Path) -> dict:
    from .onnx_import import check, load_onnx, measure, read_model

    sig = check(read_model(path))
    module = load_onnx(path, sig.classes, sig.channels, sig.image_size)
    cost = measure(module, sig.channels, sig.image_size)
    shape = {"classes": sig.classes, "channels": sig.channels, "image_size": sig.image_size}
    return {**shape, "nodes": sum(sig.ops.values()), "ops": sig.ops, **cost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsq.model_file")
    parser.add_argument("file", type=Path)
    parser.add_argument("--arch")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    a = parser.parse_args(argv)
    try:
        found = inspect(a.file, a.arch, a.classes, a.channels, a.image_size)
    except (NotAModel, ValueError) as e:
        print(json.dumps({"error": str(e)[:2000]}))
        return 2
    except Exception as e:  # noqa: BLE001 - the file's model failed to run or to load
        print(json.dumps({"error": f"the model failed on a blank image: {type(e).__name__}: "
                          f"{str(e)[:1000]}"}))  # fmt: skip
        return 2
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
