"""Spec files: YAML (JSON is YAML too) read as the JSON data the API would receive, by the
rules the dashboard's js-yaml reads it with, and refused with a reason where it is not."""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

MAX_FILE = 256 << 10  # bytes of a spec file, as many as the API takes by default
MAX_SIZE = 4_000_000  # values and characters in a spec file, aliases expanded
MAX_INT = 2**53  # past it a JavaScript reader (the dashboard) loses digits; no spec needs it
_SURROGATE = re.compile("[\ud800-\udfff]")


class DocumentError(ValueError):
    """A file that holds no JSON data: unreadable, not YAML, or a value JSON has not."""


def read_document(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML or JSON file holds, as JSON data (a key given twice, a value JSON has
    not, or aliases that expand past MAX_SIZE are a DocumentError)."""
    data = _load(_text_of(path), path)
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"holds {_a(type(data).__name__)}"
        raise DocumentError(f"{path} {what}; a spec is a mapping with name, dataset, model, ...")
    if _size_over(data, MAX_SIZE):
        raise DocumentError(f"{path} expands to over {MAX_SIZE} values and characters (aliases "
                            "of aliases, or an alias inside itself)")  # fmt: skip
    try:
        return _json_data(data, "")
    except RecursionError:  # aliases can nest what no line of the file does
        raise DocumentError(f"{path} nests deeper than Python can read") from None
    except _NotJson as e:
        raise DocumentError(f"{path}: {e}") from None


def _load(text: str, path: str | Path) -> Any:
    """The YAML's data; its errors say where, in lines and columns."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise DocumentError(f"{path} nests deeper than Python can read") from None
    except yaml.reader.ReaderError as e:  # a control character, told by its offset
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        code = e.character if isinstance(e.character, int) else ord(e.character)
        raise DocumentError(f"{path} holds the control character U+{code:04X} at line {line}, "
                            f"column {column}") from None  # fmt: skip
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        lines = text.splitlines()
        indent = mark and mark.line < len(lines) and not lines[mark.line][: mark.column].strip()
        hint = "; YAML indents with spaces, never tabs" if "\\t" in problem and indent else ""
        raise DocumentError(f"{path} is not valid YAML{where}: {problem}{hint}") from None
    except ValueError:  # int() of 5,000 digits
        raise DocumentError(f"{path} holds a number too long to read") from None


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _text_of(path: str | Path) -> str:
    try:
        with open(path, "rb") as file:  # a pipe is read as `cat` reads it, waiting for a writer
            raw = file.read(MAX_FILE + 1)
    except OSError as e:
        raise DocumentError(f"cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_FILE:
        raise DocumentError(f"{path} is over {MAX_FILE} bytes; a spec is a few kilobytes")
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise DocumentError(f"{path} is not UTF-8 text (byte {e.start})") from None


def _size_over(data: Any, limit: int) -> bool:
    """Whether `data` holds over `limit` values and characters, counting each alias's every
    use (a few lines of aliases of aliases can stand for gigabytes)."""
    pending, count = [data], 0
    while pending and count <= limit:
        value = pending.pop()
        count += 1 + (len(value) if isinstance(value, str) else 0)
        if isinstance(value, dict):
            pending.extend(value.values())
            count += sum(len(key) for key in value if isinstance(key, str))
        elif isinstance(value, list):
            pending.extend(value)
    return count > limit


class _NotJson(Exception):
    pass


def _json_data(value: Any, where: str) -> Any:
    """`value` as JSON carries it, or _NotJson naming where it cannot: what the API receives is
    what the file says, never a key 1 sent as "1" or a date sent as a string."""
    at = where or "the top level"
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotJson(f"{at} has the key {key!r}, not a string; quote it")
            key = _text(key, at)
            if key in out:  # "\\ud83d\\ude00" and the emoji it stands for: one key
                raise _NotJson(f"{at} has the key {key!r} twice")
            out[key] = _json_data(item, f"{where}.{key}" if where else key)
        return out
    if isinstance(value, list):
        return [_json_data(item, f"{where}.{i}") for i, item in enumerate(value)]
    if isinstance(value, str):
        return _text(value, at)
    if isinstance(value, float) and not math.isfinite(value):
        raise _NotJson(f"{at} is {value}, which JSON cannot carry")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise _NotJson(f"{at} is an integer past 2^53; no spec needs one that large")
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INT:
        return int(value)  # 10.0 is 10, as for the dashboard (JavaScript has one kind of number)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise _NotJson(f"{at} holds {_a(type(value).__name__)}, which JSON cannot carry; quote it")


def _text(text: str, where: str) -> str:
    """PyYAML reads the escape "\\ud83d\\ude00" (as json.dump writes an emoji) as two halves of a
    surrogate pair: joined here. A half alone is no text."""
    if not _SURROGATE.search(text):
        return text
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise _NotJson(f"{where} holds half a UTF-16 surrogate pair, which is no text") from None


# The tags a spec's values may have, and when a plain scalar is each: js-yaml 4's CORE_SCHEMA
# (YAML 1.2's core schema, with underscores and 0b; a number never ends in `_`).
NULL, BOOL, INT, FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float"))
_RULES = {
    NULL: r"~|null|Null|NULL|",
    BOOL: r"true|True|TRUE|false|False|FALSE",
    INT: r"[-+]?(?:0b[01_]*[01]|0o[0-7_]*[0-7]|0x[0-9a-fA-F_]*[0-9a-fA-F]|0"
    r"|(?!0_)[0-9](?:[0-9_]*[0-9])?)",
    FLOAT: r"(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))(?<!_)",
}
_PATTERNS = {tag: re.compile(f"(?:{rule})\\Z") for tag, rule in _RULES.items()}  # match: whole


class _Loader(yaml.SafeLoader):
    """YAML read as js-yaml's CORE_SCHEMA (the dashboard's) reads it: PyYAML's YAML 1.1 reads
    1e-4 as a string, 010 as 8, 1:00 as 60, `no` as false and `name: 2026-01-01` as a date.
    Only JSON's kinds of value: no dates, sets or binary, and `<<` is a key like any other
    (any other tag, `!!merge` included, is an error). A key given twice in one mapping is
    refused, not the last one kept."""

    def compose_scalar_node(self, anchor: str | None) -> yaml.ScalarNode:
        event = self.peek_event()
        if event.tag == "!":  # the non-specific tag: a string (PyYAML would resolve `! 5` to 5)
            event.tag = "tag:yaml.org,2002:str"
        return super().compose_scalar_node(anchor)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if not isinstance(node, yaml.MappingNode):  # `!!map [a]`
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping, found a {node.id}", node.start_mark
            )
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # refused by the mapping itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)

    def scalar_of(self, node: yaml.ScalarNode, tag: str) -> str:
        """The scalar's text, which must be what `tag` reads (`!!int " 1"` is not)."""
        text = self.construct_scalar(node)
        if not _PATTERNS[tag].match(text):
            kind = tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"{text[:40]!r} is not a {kind}", node.start_mark
            )
        return text

    def construct_yaml_null(self, node: yaml.ScalarNode) -> None:
        self.scalar_of(node, NULL)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        return self.scalar_of(node, BOOL).lower() == "true"

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.scalar_of(node, INT).replace("_", "")
        sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
        base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2])
        return sign * (int(digits[2:], base) if base else int(digits))

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        text = self.scalar_of(node, FLOAT).replace("_", "").lower()
        return float(text.replace(".inf", "inf").replace(".nan", "nan"))


_Loader.yaml_implicit_resolvers = {}
for _tag, _pattern in _PATTERNS.items():
    _Loader.add_implicit_resolver(_tag, _pattern, None)
_Loader.yaml_constructors = {
    None: yaml.SafeLoader.construct_undefined,  # any other tag: an error naming it
    "tag:yaml.org,2002:str": yaml.SafeLoader.construct_yaml_str,
    "tag:yaml.org,2002:seq": yaml.SafeLoader.construct_yaml_seq,
    "tag:yaml.org,2002:map": yaml.SafeLoader.construct_yaml_map,
    NULL: _Loader.construct_yaml_null,
    BOOL: _Loader.construct_yaml_bool,
    INT: _Loader.construct_yaml_int,
    FLOAT: _Loader.construct_yaml_float,
}
