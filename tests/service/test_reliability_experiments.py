"""Experiments a hostile client wrote: a grid path inside another, a scalar where the base
needs a section. Each is a 422 naming the field as the request has it, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .conftest import TINY
from .test_security import Api

pytestmark = pytest.mark.timeout(300)

TERNARY = [-1, 0, 1]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    data = tmp_path_factory.mktemp("experiments")
    (data / "datasets").mkdir()
    server = Api(data)
    try:
        with server.client("ann") as client:
            yield client
    finally:
        server.proc.stop()


def experiment(**changes: object) -> dict:
    return {
        "name": "overlaps",
        "base": dict(TINY),
        "baseline": {"train": True},
        "grid": {"training.lr": [0.01]},
    } | changes


def with_base(**sections: object) -> dict:
    return {"base": dict(TINY) | sections}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"grid": {"training.lr": [0.1], "training.lr.x": [1]}}, "grid.training.lr.x"),
        ({"grid": {"training.lr.x": [1], "training.lr": [0.1]}}, "grid.training.lr.x"),
        (
            {"grid": {"quantization.weight": [TERNARY], "quantization.weight.bits": [2]}},
            "grid.quantization.weight.bits",
        ),
        (
            {"grid": {"quantization.weight.bits": [2], "quantization.weight": [None]}},
            "grid.quantization.weight.bits",
        ),
        ({"grid": {"training": [{"lr": 0.1}], "training.lr": [0.2]}}, "grid.training.lr"),
        (
            {"grid": {"quantization.layers": [{}], "quantization.layers.x": [{}]}},
            "grid.quantization.layers.x",
        ),
        (with_base(quantization="x"), "base.quantization"),
        (with_base(quantization=None), "base.quantization"),
        (  # the base is checked as given, before any variant is laid over it
            with_base(quantization=3) | {"grid": {"quantization.weight.bits": [2]}},
            "base.quantization",
        ),
        (
            with_base(quantization="x") | {"kind": "sensitivity", "grid": None},
            "base.quantization",
        ),
    ],
)
def test_an_overlapping_or_misshapen_experiment_is_a_422_naming_the_field(
    client: httpx.Client, change: dict, field: str
) -> None:
    response = client.post("/v1/experiments", json=experiment(**change))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["field"] == field, response.json()
