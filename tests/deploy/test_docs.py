"""The docs' generated references (scripts/docs_reference.py, run by mkdocs-gen-files at build
time) cover the code they come from: every job spec field with its default, every route of
the app, every setting; and the hand-written settings table names every setting too."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_reference", ROOT / "scripts/docs_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def models_in(annotation: Any) -> list[tuple[type[BaseModel], str]]:
    """The pydantic models a field holds (through Optional, unions and Annotated), each with
    what its fields' names add: "" or, in a map, "<key>." (the reference's name for a key)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    if typing.get_origin(annotation) is dict:
        return [(m, "<key>." + k) for m, k in models_in(typing.get_args(annotation)[1])]
    return [found for arg in typing.get_args(annotation) for found in models_in(arg)]


def fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, default) of every field of `model` and of the models it nests."""
    out = []
    for name, info in model.model_fields.items():
        out.append((prefix + name, info.default))
        for nested, infix in models_in(info.annotation):
            out += fields(nested, f"{prefix}{name}.{infix}")
    return out


def row(page: str, name: str) -> str:
    found = re.findall(rf"^\| `{re.escape(name)}` \|.*$", page, flags=re.M)
    assert found, f"{name} is not in the reference"
    return found[0]


def test_every_job_spec_field_is_in_the_spec_reference_with_its_default(reference) -> None:
    from lsq.spec import JobSpec

    page = reference.spec_reference()
    names = fields(JobSpec)
    assert len(names) > 30
    assert {"training.distill.alpha", "quantization.layers.<key>.weight"} <= set(dict(names))
    for name, default in names:
        cells = row(page, name)
        if default is PydanticUndefined:
            assert "| required |" in cells, name
        elif not isinstance(default, BaseModel):
            assert f"`{json.dumps(default)}`" in cells, (name, default)


def test_the_spec_reference_shows_bounds_and_the_service_and_experiment_fields(reference) -> None:
    from api.service.experiments.request import ExperimentSpec

    page = reference.spec_reference()
    assert "| ≥ 1, ≤ 10000 | `90` |" in row(page, "training.epochs")
    assert "> 0, ≤ 10" in row(page, "training.lr")
    assert (
        "| `model.init` | string &#124; JobRef &#124; UploadRef &#124; null |" in page
    )  # the service's
    for name, _ in fields(ExperimentSpec):
        row(page, name)


def test_every_openapi_route_is_in_the_api_reference(reference) -> None:
    openapi = reference.openapi()
    page = reference.api_reference(openapi)
    headings = re.sub(r'<span class="route-param">(\{\w+\})</span>', r"\1", page)
    assert len(openapi["paths"]) > 10
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            heading = f'<span class="http-{method}">{method.upper()}</span> {path}'
            assert heading in headings, heading
            assert operation["summary"] in page
            for status in operation["responses"]:
                assert status in page
    assert "`" not in "".join(re.findall(r"<td>.*?</td>", page, flags=re.S))


def test_every_setting_is_in_both_settings_pages(reference) -> None:
    from api.service.config import Settings

    generated = reference.settings_reference()
    written = (ROOT / "docs/deploying/settings.md").read_text()
    for info in Settings.model_fields.values():
        assert f"| `{info.alias}` |" in generated, info.alias
        assert f"`{info.alias}`" in written, f"docs/deploying/settings.md: {info.alias}"
