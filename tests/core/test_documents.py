"""Spec files read as the JSON data the API would receive (lsq.documents)."""

import json

import pytest

from lsq.documents import DocumentError, read_document
from lsq.spec import JobSpec


def read(tmp_path, text: str) -> dict:
    (tmp_path / "spec.yaml").write_text(text)
    return read_document(tmp_path / "spec.yaml")


def test_yaml_is_read_by_its_1_2_core_schema_as_the_dashboard_reads_it(tmp_path):
    """Not PyYAML's YAML 1.1: there 010 is 8, 1:00 is 60, `no` is false and 1e-4 a string.
    The values are js-yaml's (CORE_SCHEMA), which the dashboard's form reads with."""
    text = ("a: 010\nb: 1:00\nc: no\nd: 1e-4\ne: 0o17\nf: 0x1F\ng: ~\nh: True\ni: 0b11\n"
            "j: 1_000\nk: -0x1F\nl: 1_0.5\nm: .5\nn: -.5\no: yes\n")  # fmt: skip
    assert read(tmp_path, text) == {
        "a": 10, "b": "1:00", "c": "no", "d": 0.0001, "e": 15, "f": 31, "g": None, "h": True,
        "i": 3, "j": 1000, "k": -31, "l": 10.5, "m": 0.5, "n": "-.5", "o": "yes",
    }  # fmt: skip


def test_yaml_is_read_as_json_data(tmp_path):
    """`name: 2026-01-01` is the name a person wrote, not a date JSON cannot carry."""
    text = "name: 2026-01-01\ndataset: {name: synthetic}\nmodel: {arch: resnet20}\n"
    assert JobSpec.model_validate(read(tmp_path, text)).name == "2026-01-01"


def test_an_emoji_as_json_dump_escapes_it_is_one_character(tmp_path):
    """json.dump writes it as two escaped halves, which PyYAML reads apart."""
    text = json.dumps({"name": "run \U0001f600", "k": {"\U0001f600": 1}})
    assert read(tmp_path, text) == {"name": "run \U0001f600", "k": {"\U0001f600": 1}}


def test_a_mapping_merged_in_may_be_overridden(tmp_path):
    text = "d: &d {lr: 0.1, epochs: 2}\nt: {<<: *d, lr: 0.2}\n"
    assert read(tmp_path, text)["t"] == {"lr": 0.2, "epochs": 2}


LAUGHS = (
    "a0: &a0 ["
    + ", ".join(["lol"] * 10)
    + "]\n"
    + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9))
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ntraining: {lr: .nan}\n", "training.lr is nan, which JSON cannot carry"),
        ("name: x\ntraining: {lr: -.inf}\n", "training.lr is -inf"),
        ("name: x\nseed: 1e400\n", "seed is inf"),
        ("quantization: &a {layers: *a}\n", "expands to over 1000000 values"),
        (LAUGHS, "expands to over 1000000 values"),  # 500 bytes for 10^9 strings
        (
            "name: x\ntraining: {lr: 0.1}\ntraining: {epochs: 1}\n",
            "line 3.*'training' is given twice",
        ),
        ("name: x\n" + "#" * (256 << 10), "is over 262144 bytes"),
        (
            "quantization: {layers: {1: {weight: [-1, 0, 1]}}}\n",
            "quantization.layers has the key 1",
        ),
        ("q: {layers: {true: {weight: [-1, 0, 1]}}}\n", "q.layers has the key True, not a string"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper than Python can read"),
        ('name: "x\\ud800"\n', "name holds half a UTF-16 surrogate pair"),
        ("seed: " + "1" * 5000 + "\n", "a value YAML cannot read"),
        ("seed: 0x" + "f" * 5000 + "\n", "seed is a number past 2\\^63"),
        ('a: !!int "x"\n', "a value YAML cannot read"),
        ('a: !!bool "maybe"\n', "a value YAML cannot read"),
        ("a: !!binary aGVsbG8=\n", "a holds a bytes, which JSON cannot carry"),
        ("[1, 2]\n", "holds a list; a spec is a mapping"),
    ],
)
def test_what_json_cannot_carry_is_refused_not_changed(tmp_path, text, expected):
    """What the API would receive is what the file says: a key 1 is not sent as "1"."""
    with pytest.raises(DocumentError, match=expected):
        read(tmp_path, text)


def test_a_file_that_is_no_spec_file_is_a_readable_error(tmp_path):
    for path, expected in [(tmp_path, "Is a directory"), ("/dev/zero", "is over 262144 bytes")]:
        with pytest.raises(DocumentError, match=expected):
            read_document(path)
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(DocumentError, match="not UTF-8 text"):
        read_document(tmp_path / "latin1.yaml")
