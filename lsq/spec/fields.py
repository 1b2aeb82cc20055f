"""The job contract's field types and bounds: what every model of lsq.spec.models is made of
(strict objects, printable bounded text, level sets as pydantic fields)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from ..archs import ONNX_ARCH, OWN_NAMES, TIMM_NAME, plugins, table, unknown
from ..levels import ACCEPTED, MAX_BITS, LevelSet, parse_levels
from ..text import show

DatasetName = Literal["cifar10", "imagenet", "fashion-mnist", "image_folder", "synthetic"]

# Every bound of the spec, in one place. The service may set lower caps (api.service.limits).
MAX_PATH = 4096  # characters of a path
MAX_SUBSET = 10_000_000  # images in a train_size / test_size subset
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_DEVICES = 64
MAX_SEED = 2**32 - 1
MAX_SYNTHETIC_BYTES = 2**30  # a synthetic set's uint8 images, train and test together
MAX_LAYER_PATTERNS = 64
MAX_BN_BATCHES = 1000
MAX_UNKNOWN_KEYS = 20


class Strict(BaseModel):
    # Strict: no "3" for 3 and no true for 1; finite floats only; unknown keys are mistakes.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _few_keys(cls, data: Any) -> Any:
        # Each unknown key costs an error, and only 20 are shown: 20,000 of them (a 250 KB
        # body) would cost the API 30 ms. Refused on the count instead, before any is checked.
        if isinstance(data, dict) and len(data) > len(cls.model_fields) + MAX_UNKNOWN_KEYS:
            raise ValueError(f"{len(data)} keys; accepted: {', '.join(cls.model_fields)}")
        return data


# Control characters (C0, DEL, C1), line separators and bidirectional overrides: they break
# logs and terminals, can disguise text, and PostgreSQL refuses NUL.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


# The JSON schema's approximation of `printable` (C0, DEL and C1), for the spec's readers.
PRINTABLE_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"


def printable(text: str) -> str:
    if _CONTROL.search(text):
        raise ValueError("must not contain control characters (newlines, tabs, NUL...)")
    return text


def bounded_text(max_length: int) -> Any:
    """1 to max_length characters, none of them a control character (they break logs and
    terminals, and PostgreSQL refuses NUL)."""
    return Annotated[
        str,
        StringConstraints(min_length=1, max_length=max_length),
        AfterValidator(printable),
        Field(json_schema_extra={"pattern": PRINTABLE_PATTERN}),
    ]


Path_ = bounded_text(MAX_PATH)


def _known_arch(arch: str) -> str:
    if problem := unknown(arch):
        raise ValueError(problem)
    return arch


Arch = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    AfterValidator(printable),
    AfterValidator(_known_arch),
    # The names this installation knows (its entry points included), or any of timm's.
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "enum": [
                        *OWN_NAMES,
                        *(a for a in table() if a not in OWN_NAMES),
                        *plugins(),
                        ONNX_ARCH,
                    ],
                },
                {"type": "string", "pattern": f"^{TIMM_NAME.pattern}$"},
            ]
        }
    ),  # fmt: skip
    Field(
        description="resnet20/32/44/56 (CIFAR ResNets), vit_tiny, any torchvision classifier by "
        "builder name (resnet18, mobilenet_v2, efficientnet_b0, vit_b_16, ...), timm:<name> "
        "(with the timm extra), a network the deployment registers as an lsq.networks entry "
        "point, or onnx: the ONNX classifier model.onnx (the service: model.upload)",
        examples=["resnet20", "mobilenet_v2", "vit_tiny", "timm:resnet18"],
    ),
]


# The pydantic field type used by the job spec: validated on input, written back as a list.
Levels = Annotated[
    LevelSet,
    BeforeValidator(parse_levels),
    PlainSerializer(lambda levels: levels.to_json()),
    WithJsonSchema(
        {
            "description": ACCEPTED,
            "anyOf": [
                {"type": "array", "items": {"type": "integer"}, "minItems": 2},
                {
                    "type": "object",
                    "properties": {
                        "bits": {"type": "integer", "minimum": 1, "maximum": MAX_BITS},
                        "signed": {"type": "boolean", "default": False},
                        "symmetric": {"type": "boolean", "default": False},
                    },
                    "required": ["bits"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {
                        "min": {"type": "integer", "maximum": 0},
                        "max": {"type": "integer", "minimum": 0},
                    },
                    "required": ["min", "max"],
                    "additionalProperties": False,
                },
            ],
            "examples": [[-1, 0, 1], [0, 1, 2, 3], {"bits": 4, "signed": True}],
        }
    ),
]


def _parse_first_last(value: Any) -> str | LevelSet:
    if value in ("float", "same"):
        return value
    if isinstance(value, str):
        raise ValueError(f"got {show(value)}; expected 'float', 'same' or {ACCEPTED}")
    return parse_levels(value)


FirstLast = Annotated[
    Literal["float", "same"] | LevelSet,
    BeforeValidator(_parse_first_last),
    PlainSerializer(lambda v: v if isinstance(v, str) else v.to_json()),
    WithJsonSchema(
        {
            "description": "'float' (first conv and last linear stay full precision), 'same' "
            "(quantized like the others) or a level set of their own "
            "(e.g. {bits: 8, signed: true})",
            "anyOf": [
                {"enum": ["float", "same"]},
                {"type": "array", "items": {"type": "integer"}},
                {"type": "object"},
            ],
        }
    ),
]
