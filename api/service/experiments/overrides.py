"""What each row of an experiment changes in its base: the grid's values crossed, the listed
variants one by one, or (kind sensitivity) the probes of the network's layers; and the helpers
that lay a change over a spec, flatten it and show it."""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import ValidationError

from api.service.errors import InvalidField
from api.service.experiments.request import (
    GRID_PATH,
    MAX_VALUES,
    ExperimentSpec,
    Reference,
    SensitivityOptions,
)
from api.service.job_spec import ServiceJobSpec
from lsq.spec import describe_errors, printable
from lsq.text import cut


class Override(NamedTuple):
    """What one variant changes in the base, and where the request said so."""

    where: str  # the request's field: `grid`, `variants.2`, `sensitivity`
    change: dict[str, Any]
    name: str | None
    reference: Reference | None


def overrides(
    exp: ExperimentSpec, check_count: Callable[[int], None] | None = None
) -> list[Override]:
    """Per variant: the request's field it came from, its change, name and reference. With
    `check_count` (a new request: plan's limit), their count is checked before any is built."""
    check = check_count or (lambda rows: None)
    if exp.kind == "sensitivity":
        return _probes(exp, check)
    if exp.grid is not None:
        return _grid(exp.grid, check)
    check(len(exp.variants or []))
    return _listed(exp.variants or [])


def _probes(exp: ExperimentSpec, check: Callable[[int], None]) -> list[Override]:
    """Untrained: one job probes every layer (lsq.sensitivity). Fine-tuned: one job with every
    layer quantized, then one per probed layer, each with its levels named layer by layer."""
    options = exp.sensitivity or SensitivityOptions()
    if not options.fine_tune:
        check(1)
        probe = {"sensitivity": options.model_dump(exclude={"fine_tune"})}
        return [Override("sensitivity", probe, "probes", None)]
    base = validated(merge(exp.base, {"name": exp.name}), "base")
    arch, q = base.model.arch, base.quantization
    if not q.enabled:
        raise InvalidField("base.quantization", "give the levels to probe each layer at")
    try:
        layers = options.probed(arch, q)
    except ValueError as e:
        raise InvalidField("sensitivity.layers", str(e)) from None
    check(1 + len(layers))
    warmup = min(base.training.warmup_epochs, options.fine_tune or 0)
    training = {"epochs": options.fine_tune, "warmup_epochs": warmup}
    return [
        Override("sensitivity", {"quantization": {"layers": options.levels_for(arch, q, layer)},
                                 "training": training}, layer or "every layer", None)
        for layer in [None, *layers]
    ]  # fmt: skip


def _grid(grid: dict[str, list[Any]], check: Callable[[int], None]) -> list[Override]:
    for path, values in grid.items():
        shown = cut(path, 60)
        if not GRID_PATH.fullmatch(path):
            raise InvalidField(f"grid.{shown}", "not a dotted path such as quantization.weight")
        if not 1 <= len(values) <= MAX_VALUES:
            raise InvalidField(f"grid.{path}", f"give 1 to {MAX_VALUES} values")
    check(math.prod(len(values) for values in grid.values()))
    combos = itertools.product(*grid.values())
    return [Override("grid", _nested(dict(zip(grid, combo, strict=True))), None, None)
            for combo in combos]  # fmt: skip


def paths_apart(grid: dict[str, list[Any]]) -> None:
    """No grid path lies inside another (`training.lr` and `training.lr.x`): the outer one
    sets the whole of the inner one's value, so one of the two would be lost, or would land
    inside the other's values."""
    for inner, outer in itertools.permutations(grid, 2):
        if inner.startswith(f"{outer}."):
            raise InvalidField(
                f"grid.{cut(inner, 60)}", f"inside grid.{cut(outer, 60)}, which sets all of it: "
                "give one of the two",
            )  # fmt: skip


def _listed(variants: list[dict[str, Any]]) -> list[Override]:
    out = []
    for i, raw in enumerate(variants):
        change = dict(raw)
        name, reference = change.pop("name", None), change.pop("reference", None)
        if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 100):
            raise InvalidField(f"variants.{i}.name", "a name of 1 to 100 characters")
        try:
            printable(name or "")
        except ValueError as e:
            raise InvalidField(f"variants.{i}.name", str(e)) from None
        try:
            reference = Reference.model_validate(reference) if reference is not None else None
        except ValidationError as e:
            field, message = describe_errors(e)[0]
            raise InvalidField(f"variants.{i}.reference.{field}".rstrip("."), message) from None
        out.append(Override(f"variants.{i}", change, name, reference))
    return out


def validated(spec: dict[str, Any], where: str) -> ServiceJobSpec:
    try:
        return ServiceJobSpec.model_validate(spec)
    except ValidationError as e:
        field, message = describe_errors(e, ServiceJobSpec)[0]
        if field.split(".")[0] == where:  # `sensitivity`: the experiment's is the job's
            raise InvalidField(field, message) from None
        raise InvalidField(f"{where}.{field}" if field != "body" else where, message) from None


def merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`base` with `change` laid over it, sections merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in dotted.items():
        *parents, last = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path != "quantization.layers":  # keys: globs
            out |= flatten(value, f"{path}.")
        else:
            out[path] = value
    return out


def key_values(settings: dict[str, Any]) -> str:
    """Flattened settings as `key=value, ...`: a string as written, anything else as JSON."""
    return ", ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
        for key, value in settings.items()
    )
