"""The docs' generated references, made from the code at build time so they cannot drift:
the job spec (lsq.spec's pydantic models), the service's settings (api.service.config) and the
REST API (the app's OpenAPI), plus the bench/ pages the method's evidence links to.

mkdocs-gen-files runs this file on every `mkdocs build` (mkdocs.yml: plugins.gen-files);
tests/deploy/test_docs.py imports it and calls the renderers on their own.
"""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
# Document the code of this checkout, whatever the venv's editable install points at.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Pages copied from bench/ into the site, under the same names (docs link to ../bench/...).
BENCH_PAGES = ("README.md", "accuracy.md", "zoo.md")
BOUNDS = (
    ("minimum", "≥ {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMaximum", "< {}"),
    ("minLength", "length ≥ {}"),
    ("maxLength", "length ≤ {}"),
    ("minItems", "items ≥ {}"),
    ("maxItems", "items ≤ {}"),
    ("minProperties", "keys ≥ {}"),
    ("maxProperties", "keys ≤ {}"),
)


class Row(NamedTuple):
    """One field of a model: its dotted name and what the reference says of it."""

    name: str
    type: str
    bounds: str
    default: str
    description: str


class Schema:
    """A JSON schema with its `$defs`, read field by field."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.root = schema
        self.defs = schema.get("$defs", {})

    def resolve(self, s: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in s:
            return self.defs[s["$ref"].rsplit("/", 1)[-1]]
        return s

    def models(self, s: dict[str, Any]) -> list[dict[str, Any]]:
        """The object models (schemas with properties, reached by $ref) a field may hold."""
        found = []
        for option in s.get("anyOf") or s.get("oneOf") or [s]:
            if "$ref" in option and "properties" in self.resolve(option):
                found.append(self.resolve(option))
        return found

    def type_of(self, s: dict[str, Any]) -> str:
        if "$ref" in s:
            target = self.resolve(s)
            return target.get("title", "object") if "properties" in target else self.type_of(target)
        options = s.get("anyOf") or s.get("oneOf")
        if options:
            return " | ".join(dict.fromkeys(self.type_of(o) for o in options))
        if "enum" in s:  # a long list (the networks) is cut: the description says where it is
            shown = [json.dumps(v) for v in s["enum"]]
            return " | ".join(shown[:8] + (["..."] if len(shown) > 8 else []))
        if "const" in s:
            return json.dumps(s["const"])
        kind = s.get("type")
        if kind == "array":
            return f"list of {self.type_of(s['items'])}" if "items" in s else "list"
        if kind == "object":
            if "properties" in s:
                return "{" + ", ".join(s["properties"]) + "}"
            extra = map_values(s)
            return f"map of {self.type_of(extra)}" if extra else "object"
        return kind or "any"

    def rows(self, model: dict[str, Any], prefix: str = "") -> list[Row]:
        """Every field of `model`, depth first: a field holding a model is followed by its own
        fields (`training.distill.alpha`), a map of models by `name.<key>.field`."""
        out = []
        required = set(model.get("required", ()))
        for key, s in model.get("properties", {}).items():
            name = prefix + key
            nested = self.models(s)
            out.append(self._row(name, s, key in required, nested))
            for target in nested:
                out += self.rows(target, name + ".")
            for extra in [map_values(s)] if map_values(s) else []:
                for target in self.models(extra):
                    out += self.rows(target, name + ".<key>.")
        return out

    def _row(self, name: str, s: dict[str, Any], required: bool, nested: list) -> Row:
        if required:
            default = "required"
        elif nested and isinstance(s.get("default"), dict):
            default = "its fields' defaults"
        elif "default" in s:
            default = code(json.dumps(s["default"], ensure_ascii=False))
        else:
            default = ""
        # A field without a description of its own says what its one model says (a union's
        # members each describe themselves, not the field).
        options = [o for o in s.get("anyOf", ()) if "description" in o]
        description = (
            s.get("description")
            or (nested[0].get("description", "") if len(nested) == 1 else "")
            or (options[0]["description"] if options else "")
        )
        return Row(name, self.type_of(s), bounds_of(s), default, description)


def map_values(s: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of a map's values: `additionalProperties`, or the one `patternProperties`
    (pydantic's form when the keys are constrained)."""
    extra = s.get("additionalProperties")
    if isinstance(extra, dict) and extra:
        return extra
    patterns = list(s.get("patternProperties", {}).values())
    return patterns[0] if len(patterns) == 1 else None


def bounds_of(s: dict[str, Any]) -> str:
    """ge/le/min_length/... of a field, from its schema or the non-null member of a union."""
    from lsq.spec.fields import PRINTABLE_PATTERN

    found = []
    for part in [s, *(o for o in s.get("anyOf", ()) if o.get("type") != "null")]:
        found += [text.format(part[key]) for key, text in BOUNDS if key in part]
        if part.get("pattern") == PRINTABLE_PATTERN:  # say what it means, not the regex
            found.append("no control characters")
        elif "pattern" in part:
            found.append(f"matches {code(part['pattern'])}")
    return ", ".join(dict.fromkeys(found))


def code(text: str) -> str:
    """`text` as a code span in a table cell (a backtick inside needs a longer fence)."""
    fence = "``" if "`" in text else "`"
    return f"{fence}{text.replace('|', '&#124;')}{fence}"


def prose(text: str) -> str:
    """Free text for a table cell: one line, no raw HTML, no column breaks; code spans kept."""
    parts = " ".join(text.split()).split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = html.escape(parts[i], quote=False)
    return "`".join(parts).replace("|", "&#124;")


def table(rows: list[Row], first: str = "field") -> str:
    lines = [f"| {first} | type | bounds | default | description |", "|---|---|---|---|---|"]
    for r in rows:
        cells = (code(r.name), prose(r.type), r.bounds, r.default, prose(r.description))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def model_rows(model: type) -> list[Row]:
    """Every field of a pydantic model, recursively (its JSON schema, as the API shows it)."""
    schema = Schema(model.model_json_schema())
    return schema.rows(schema.root)


# The tables are wide: this page gives them the table of contents' column.
SPEC_INTRO = """\
---
hide: [toc]
---

# Job spec reference

Generated from the code at every build (`lsq.spec.JobSpec` and the models it nests; the
service's `api.service.job_spec.ServiceJobSpec`; `ExperimentSpec` in
`api.service.experiments/`), so it cannot drift. What the fields mean together, with examples,
is in [The job spec](../jobs/index.md) and [Experiments](../experiments.md). Bounds are the
spec's own; a service may lower some of them ([Security and limits](../security.md)).
`<key>` stands for a key of a map: a glob of layer names in `quantization.layers`.
"""


def spec_reference() -> str:
    """The job spec, the service's differences from it, and the experiment request."""
    from api.service.experiments.request import ExperimentSpec
    from api.service.job_spec import ServiceJobSpec
    from lsq.spec import SPEC_VERSION, JobSpec

    core = model_rows(JobSpec)
    service = [r for r in model_rows(ServiceJobSpec) if r not in core]
    return "\n".join(
        [
            SPEC_INTRO,
            f"## A job: `JobSpec` (spec version {SPEC_VERSION})\n",
            "`lsq run SPEC` reads it from a YAML or JSON file; `POST /v1/jobs` takes it as "
            "its body.\n",
            table(core),
            "## What the service accepts besides: `ServiceJobSpec`\n",
            "A spec submitted to the service may name another job's final model with "
            "`{job: ID}`; these fields differ from the table above, every other is the same.\n",
            table(service),
            "## An experiment: `ExperimentSpec`\n",
            "The body of `POST /v1/experiments` and the file `lsq experiment` reads. `base` is "
            "a job spec (above) without its `name`.\n",
            table(model_rows(ExperimentSpec)),
        ]
    )


def settings_reference() -> str:
    """Every setting of the service: its environment variable, type, bounds and default."""
    from api.service.config import Settings

    return "\n".join(
        [
            "# Settings reference\n",
            "Generated from `api.service.config.Settings` at every build. Every setting is an "
            "environment variable; what each one is for, in a sentence, is in "
            "[Settings](../deploying/settings.md).\n",
            table(model_rows(Settings), first="variable"),
        ]
    )


API_INTRO = """\
# API reference

Generated at every build from the app's own OpenAPI document
(`api.web.app.create_app().openapi()`), the one a running service serves at `/openapi.json`
and shows at `/docs`. What the routes are for, with examples, is in
[The REST API](../jobs/api.md); the job spec a `POST /v1/jobs` body holds is in the
[job spec reference](job-spec.md).
"""


def api_reference(openapi: dict[str, Any]) -> str:
    """Every route with its method, path, summary, parameters, request body and responses."""
    from openapidocs.mk.v3 import OpenAPIV3DocumentationHandler

    text = OpenAPIV3DocumentationHandler(openapi, style="MKDOCS").write()
    text = re.sub(r"\A\s*<!--.*?-->\s*", "", text, flags=re.S)  # "generated by" banner
    text = re.sub(r"\A# .*\n", "", text)  # the API's title: this page has its own
    # Descriptions land in raw HTML cells, where Markdown's `code` would show its backticks.
    text = re.sub(r"<td>.*?</td>", _code_spans, text, flags=re.S)
    return API_INTRO + "\n" + text


def _code_spans(cell: re.Match[str]) -> str:
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", cell.group(0))


def openapi() -> dict[str, Any]:
    from api.web.app import create_app

    return create_app().openapi()


def write_pages() -> None:
    """The generated pages, into mkdocs' build (never into docs/ on disk)."""
    import mkdocs_gen_files

    pages = {
        "reference/job-spec.md": spec_reference(),
        "reference/settings.md": settings_reference(),
        "reference/api.md": api_reference(openapi()),
    }
    pages |= {f"bench/{name}": (ROOT / "bench" / name).read_text() for name in BENCH_PAGES}
    for path, text in pages.items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(text)


# mkdocs-gen-files runs this file with runpy.run_path, whose __name__ is "<run_path>".
if __name__ in ("__main__", "<run_path>"):
    write_pages()
