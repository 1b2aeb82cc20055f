"""Spec files read as the JSON data the API would receive (lsq.documents)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lsq.documents import DocumentError, read_document
from lsq.spec import JobSpec

ROOT = Path(__file__).resolve().parents[2]


def read(tmp_path, text: str) -> dict:
    (tmp_path / "spec.yaml").write_text(text)
    return read_document(tmp_path / "spec.yaml")


def test_yaml_is_read_by_its_1_2_core_schema_as_the_dashboard_reads_it(tmp_path):
    """Not PyYAML's YAML 1.1: there 010 is 8, 1:00 is 60, `no` is false and 1e-4 a string.
    The values are js-yaml's (CORE_SCHEMA), which the dashboard's form reads with."""
    text = ("a: 010\nb: 1:00\nc: no\nd: 1e-4\ne: 0o17\nf: 0x1F\ng: ~\nh: True\ni: 0b11\n"
            "j: 1_000\nk: -0x1F\nl: 1_0.5\nm: .5\nn: -.5\no: yes\np: 1_\nq: 0x_\nr: 0_1\n"
            "s: 0x_1F\nt: 1.5_\nu: 10.0\nv: 1e1\n")  # fmt: skip
    assert read(tmp_path, text) == {
        "a": 10, "b": "1:00", "c": "no", "d": 0.0001, "e": 15, "f": 31, "g": None, "h": True,
        "i": 3, "j": 1000, "k": -31, "l": 10.5, "m": 0.5, "n": "-.5", "o": "yes", "p": "1_",
        "q": "0x_", "r": 1, "s": 31, "t": "1.5_", "u": 10, "v": 10,
    }  # fmt: skip
    assert isinstance(read(tmp_path, "u: 10.0\n")["u"], int)  # as JSON.stringify writes it
    assert read(tmp_path, "f: 1e16\n") == {"f": 1e16}  # a float JSON carries
    # the non-specific tag `!` makes a string, as YAML says and js-yaml reads it
    assert read(tmp_path, 'v: ! 5\nw: ! "5"\nx: ! true\n') == {"v": "5", "w": "5", "x": "true"}


def test_yaml_is_read_as_json_data(tmp_path):
    """`name: 2026-01-01` is the name a person wrote, not a date JSON cannot carry."""
    text = "name: 2026-01-01\ndataset: {name: synthetic}\nmodel: {arch: resnet20}\n"
    assert JobSpec.model_validate(read(tmp_path, text)).name == "2026-01-01"


def test_an_emoji_as_json_dump_escapes_it_is_one_character(tmp_path):
    """json.dump writes it as two escaped halves, which PyYAML reads apart."""
    text = json.dumps({"name": "run \U0001f600", "k": {"\U0001f600": 1}})
    assert read(tmp_path, text) == {"name": "run \U0001f600", "k": {"\U0001f600": 1}}


def test_anchors_are_read_and_merge_keys_are_plain_keys(tmp_path):
    """An alias repeats a value; `<<` (YAML 1.1's merge) is a key like any other, as in the
    dashboard, so the spec names it as unknown rather than two readers merging two ways."""
    assert read(tmp_path, "d: &d [1, 2]\nt: *d\n") == {"d": [1, 2], "t": [1, 2]}
    text = "d: &d {lr: 0.1}\nt: {<<: *d, lr: 0.2}\n"
    assert read(tmp_path, text)["t"] == {"<<": {"lr": 0.1}, "lr": 0.2}
    with pytest.raises(DocumentError, match="line 2.*constructor for the tag .*merge"):
        read(tmp_path, "d: &d {lr: 0.1}\nt: {? !!merge '<<' : *d}\n")


LAUGHS = (
    "a0: &a0 ["
    + ", ".join(["lol"] * 10)
    + "]\n"
    + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9))
)


LONG_LAUGHS = f'a0: &a0 "{"x" * 200_000}"\n' + "".join(
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 6)
)
DEEP = "a0: &a0 1\n" + "".join(f"a{i}: &a{i} " + "[" * 150 + f"*a{i - 1}" + "]" * 150 + "\n"
                                for i in range(1, 31))  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ntraining: {lr: .nan}\n", "training.lr is nan, which JSON cannot carry"),
        ("name: x\ntraining: {lr: -.inf}\n", "training.lr is -inf"),
        ("name: x\nseed: 1e400\n", "seed is inf"),
        ("quantization: &a {layers: *a}\n", "expands to over 4000000 values and characters"),
        (LAUGHS, "expands to over 4000000"),  # 500 bytes for 10^9 strings
        (LONG_LAUGHS, "expands to over 4000000"),  # 100,000 copies of 200 KB
        (DEEP, "nests deeper than Python can read"),  # 9 KB, 4,500 levels through aliases
        ('t: {"\\ud83d\\ude00": 1, "\U0001f600": 2}\n', "t has the key '\U0001f600' twice"),
        ("a: !!timestamp 2026-01-01\n", "could not determine a constructor for the tag"),
        ('a: !!float ""\n', "'' is not a float"),
        ('a: !!int " 1"\n', "' 1' is not a int"),
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
        ("seed: " + "1" * 5000 + "\n", "holds a number too long to read"),
        ("seed: 0x" + "f" * 5000 + "\n", "seed is an integer past 2\\^53"),
        ("seed: 9007199254740993\n", "seed is an integer past 2\\^53"),
        ('a: !!int "x"\n', "'x' is not a int"),
        ("v: !!map [a]\n", "line 1, column 4: expected a mapping, found a sequence"),
        ("a: 1\nb: 2 \x01\n", "the control character U\\+0001 at line 2, column 6"),
        ("5\n", "holds an int; a spec is a mapping"),
        ("a: 1\n\tb: 2\n", "line 2, column 1: .*'\\\\t'.*; YAML indents with spaces"),
        ("lr: 0.1\t# c\n", r"line 1, column 8: found character '\\t' that cannot start any token$"),
        ('a: !!bool "maybe"\n', "'maybe' is not a bool"),
        ("a: !!binary aGVsbG8=\n", "could not determine a constructor for the tag"),
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


SCALARS = """010 1:00 no yes on off y 1e-4 1E5 1e+5 0o17 0x1F 0x_1F ~ null Null NULL nULL True TRUE
tRUE 0b11 +0b1 1_000 1__2 -0x1F 1_0.5 .5 -.5 +.5 1_ 0_ 0x1_ 0b1_ 1.5_ .5_ 1._ 0x_ 0o_ 0b_ +0x_
._ 0_1 -0_1 00 0 -0 +12 1. 0. 2026-01-01 12:30:00 0o 0x 0b 1e5.5 0x1F.5 _1 .inf_ 1_e5""".split()


def test_every_plain_scalar_reads_as_in_the_dashboard(tmp_path):
    """The same document through js-yaml 4.1.0 (api/web/static, CORE_SCHEMA, as app.js reads the
    form) and through lsq.documents: the same JSON values."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    text = "".join(f"k{i}: {s}\n" for i, s in enumerate(SCALARS))
    script = (
        f"const y = require({json.dumps(str(ROOT / 'api/web/static/js-yaml.min.js'))});"
        "process.stdout.write(JSON.stringify(y.load(require('fs').readFileSync(0, 'utf8'),"
        " {schema: y.CORE_SCHEMA})))"
    )
    js = json.loads(subprocess.run([node, "-e", script], input=text, capture_output=True,
                                   text=True, check=True, timeout=60).stdout)  # fmt: skip
    ours = read(tmp_path, text)
    assert {SCALARS[int(k[1:])]: v for k, v in ours.items()} == {
        SCALARS[int(k[1:])]: v for k, v in js.items()
    }
