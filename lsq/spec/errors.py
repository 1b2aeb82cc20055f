"""How a spec's validation errors are shown to users, the one presentation for both CLIs and
the API: one (field, message) pair per error, fields dotted as the user wrote them, unknown keys
answered with the accepted ones and the closest, every part cut short."""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Tag, ValidationError

from ..text import cut


class SpecError(ValueError):
    """A spec that cannot be read or validated; `fields` holds (dotted field, message) pairs."""

    def __init__(self, message: str, fields: Sequence[tuple[str, str]] = ()) -> None:
        self.message, self.fields = message, list(fields)
        super().__init__(format_errors(message, self.fields))


def format_errors(message: str, fields: Sequence[tuple[str, str]]) -> str:
    """The one presentation of spec errors: a line, then one line per field."""
    return "\n".join([message, *(f"  {field}: {text}" for field, text in fields)])


def field_name(loc: Sequence[str | int]) -> str:
    """`model.init.job`, not pydantic's `model.init.Tag.job`: tags of a union's members and
    validator names are not fields (capitalised, or not identifiers). A layer pattern is a
    key of `quantization.layers`, kept as written: `quantization.layers."layer1.0.*".weight`."""
    parts, loc = [], [str(p) for p in loc]
    for i, part in enumerate(loc):
        if loc[i - 2 : i] == ["quantization", "layers"] and part != "[key]":  # [key]: pydantic's
            plain = _PLAIN.fullmatch(part)
            parts.append(part if plain else json.dumps(cut(part, MAX_KEY), ensure_ascii=False))
        elif part.isdigit() or (part.isidentifier() and not part[0].isupper()):
            parts.append(part)
    return ".".join(parts) or "body"


MAX_KEY, MAX_MESSAGE = 80, 1000
_PLAIN = re.compile(r"[a-z_][a-z0-9_]{0,79}")  # a field's name, or a pattern that could be one
_PART = re.compile(r'"(?:[^"\\]|\\.)*"|[^.]+')  # a quoted pattern is one part, dots and all
_NAMED = re.compile(r"([a-z_]+(?:\.[a-z_0-9]+)*): ")


def _shown(field: str) -> str:
    """A client's long key cut short: a 250 KB key is not a 500 KB error. A quoted pattern
    was cut before it was quoted (an escape cut in half would not read back)."""
    return ".".join(p if p.startswith('"') else cut(p, MAX_KEY) for p in _PART.findall(field))


def describe_errors(
    errors: ValidationError | Sequence[dict[str, Any]], root: type[BaseModel] | None = None
) -> list[tuple[str, str]]:
    """(field, message) per error; an unknown key names the accepted ones and the closest."""
    if isinstance(errors, ValidationError):
        errors = errors.errors()
    described = []
    for e in errors:
        field, message = field_name(e["loc"]), e["msg"].removeprefix("Value error, ")
        named = _NAMED.match(message)  # a check of a whole object that names its field
        if named and (field == "body" or named[1].startswith(field + ".")):
            field, message = named[1], message[named.end() :]
        if e["type"].endswith("_type") and "input" in e:  # strict: "3" is not 3; say so
            message += f", not {_kind(e['input'])}"
        if e["type"] == "extra_forbidden" and root is not None:
            message = _unknown_key(e["loc"], root) or message
        described.append((_shown(field), cut(message, MAX_MESSAGE)))
    return described


def _kind(value: Any) -> str:
    """What a JSON (or YAML) value is, as its writer would call it."""
    kinds = {bool: "true/false", str: "a string", int: "an integer", float: "a number",
             list: "a list", dict: "an object", type(None): "null"}  # fmt: skip
    return kinds.get(type(value), type(value).__name__)


def _unknown_key(loc: Sequence[Any], root: type[BaseModel]) -> str | None:
    *parents, key = (str(p) for p in loc)
    model: type[BaseModel] | None = root
    annotation: Any = None
    for part in parents:
        info = model.model_fields.get(part)
        if info is None:  # a union's tag (its member), a dict's key (a layer pattern), an index
            model = _member(annotation, part) or model
            continue
        annotation = info.annotation
        model = _model_in(annotation)
        if model is None:
            return None
    known = list(model.model_fields)
    close = difflib.get_close_matches(key[:100], known, n=1, cutoff=0.6)
    guess = f"did you mean {close[0]!r}? " if close else ""
    shown = cut(key, 60)
    return f"unknown key {shown!r}; {guess}accepted: {', '.join(known)}"


def _member(annotation: Any, tag: str) -> type[BaseModel] | None:
    """The model of a tagged union's member `Annotated[Model, Tag(tag)]`, if there is one."""
    for arg in typing.get_args(annotation):
        if any(isinstance(m, Tag) and m.tag == tag for m in getattr(arg, "__metadata__", ())):
            return _model_in(arg)
        if found := _member(arg, tag):
            return found
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `ModelSpec | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            if found := _model_in(arg):
                return found
    return None
