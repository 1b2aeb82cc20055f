"""The versions of the job spec's JSON form, and how a stored document is brought up to date."""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from ..archs import CIFAR_DEPTHS

# The version of the spec's JSON form. Stored with every job; a change that would make stored
# specs invalid bumps it and adds the function that upgrades the previous version's documents.
# An experiment's base is upgraded the same way (the service's stored_experiment_spec); an
# upgrade that renames a field must also reach its grid and variants' overrides.
SPEC_VERSION = 3


def _bn_reestimate_was_off(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 re-estimates batch norms by default; a version-1 spec without the field ran
    without."""
    training = data.get("training")
    if training is None or isinstance(training, dict):
        data = {**data, "training": {"bn_reestimate": 0, **(training or {})}}
    return data


def _cifar_blocks_renamed(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 names a CIFAR ResNet's blocks as torchvision does (`layers.4.conv1` is now
    `layer2.1.conv1` in ResNet-20). A layer pattern that selected other layers under the old
    names than under the new ones becomes the exact new names of the layers it selected."""
    model = data.get("model")
    arch = model.get("arch") if isinstance(model, dict) else None
    depth = str(arch).removeprefix("resnet")
    if not (depth.isdigit() and int(depth) in CIFAR_DEPTHS):
        return data
    n = (int(depth) - 2) // 6
    old = ["conv1", *(f"layers.{i}.conv{c}" for i in range(3 * n) for c in (1, 2)), "fc"]
    new = dict(zip(old, (_renamed(name, n) for name in old), strict=True))
    data = dict(data)
    q = data.get("quantization")
    if isinstance(q, dict) and isinstance(q.get("layers"), dict):
        patterns = q["layers"]
        renamed = {k: v for p, sides in patterns.items() for k, v in _each(p, sides, new)}
        data["quantization"] = {**q, "layers": renamed}
    probe = data.get("sensitivity")
    if isinstance(probe, dict) and isinstance(probe.get("layers"), list):
        globs = [k for p in probe["layers"] for k, _ in _each(p, None, new)]
        data["sensitivity"] = {**probe, "layers": globs}
    return data


def _renamed(name: str, n: int) -> str:
    if not name.startswith("layers."):
        return name
    index, _, rest = name[len("layers.") :].partition(".")
    return f"layer{int(index) // n + 1}.{int(index) % n}.{rest}"


def _each(pattern: Any, value: Any, new: dict[str, str]) -> list[tuple[Any, Any]]:
    if not isinstance(pattern, str):
        return [(pattern, value)]
    before = [new[name] for name in new if fnmatchcase(name, pattern)]
    after = [name for name in new.values() if fnmatchcase(name, pattern)]
    return [(pattern, value)] if before == after or not before else [(b, value) for b in before]


# The upgrade from each version to the next.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _bn_reestimate_was_off,
    2: _cifar_blocks_renamed,
}


def upgrade_spec(data: dict[str, Any], version: int) -> dict[str, Any]:
    """A spec document stored at `version`, brought to SPEC_VERSION."""
    for v in range(version, SPEC_VERSION):
        data = UPGRADES[v](data)
    return data
