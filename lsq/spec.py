"""The job spec: one pydantic model, the contract from the HTTP body to the training loop."""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from .archs import layer_names
from .documents import DocumentError, read_document
from .levels import (
    ACCEPTED,
    FirstMatch,
    Levels,
    LevelSet,
    Sides,
    cut,
    layer_levels,
    parse_levels,
    show,
)

DatasetName = Literal["cifar10", "imagenet", "fashion-mnist", "synthetic"]
Arch = Literal["resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet34", "resnet50"]


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


MAX_UNKNOWN_KEYS = 20


# Control characters (C0, DEL, C1), line separators and bidirectional overrides: they break
# logs and terminals, can disguise text, and PostgreSQL refuses NUL.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    if _CONTROL.search(text):
        raise ValueError("must not contain control characters (newlines, tabs, NUL...)")
    return text


# Every bound of the spec, in one place. The service may set lower caps (api.service.limits).
MAX_PATH = 4096  # characters of a path
MAX_SUBSET = 10_000_000  # images in a train_size / test_size subset
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_DEVICES = 64
MAX_SEED = 2**32 - 1
MAX_SYNTHETIC_BYTES = 2**30  # a synthetic set's uint8 images, train and test together


def _text(max_length: int) -> Any:
    """1 to max_length characters, none of them a control character (they break logs and
    terminals, and PostgreSQL refuses NUL)."""
    return Annotated[
        str,
        StringConstraints(min_length=1, max_length=max_length),
        AfterValidator(printable),
        Field(json_schema_extra={"pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"}),
    ]


Path_ = _text(MAX_PATH)


# Where a dataset is read from when `dataset.root` is not given (Debian's package).
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
DEFAULT_ROOTS = {"fashion-mnist": FASHION_MNIST_ROOT}


class DatasetSpec(Strict):
    name: DatasetName
    root: Path_ | None = Field(None, description="Folder of the dataset files; default per dataset")
    train_size: int | None = Field(
        None, ge=1, le=MAX_SUBSET, description="Seeded class-balanced training subset"
    )
    test_size: int | None = Field(
        None, ge=1, le=MAX_SUBSET, description="Seeded class-balanced test subset"
    )
    image_size: int | None = Field(
        None, ge=8, le=256, description="synthetic only: the images' side (default 16)"
    )

    @model_validator(mode="after")
    def _synthetic_fits(self) -> Self:
        if self.name != "synthetic":
            if self.image_size is not None:
                raise ValueError("image_size applies to the synthetic dataset only")
            return self
        size = (
            (self.image_size or 16) ** 2 * 3 * ((self.train_size or 2048) + (self.test_size or 512))
        )
        if size > MAX_SYNTHETIC_BYTES:
            raise ValueError(
                f"a synthetic set of train_size + test_size images of image_size^2 x 3 bytes "
                f"holds {size} bytes, more than {MAX_SYNTHETIC_BYTES}"
            )
        return self

    def folder(self) -> Path | None:
        """The folder the dataset is read from; None where it needs one and has none."""
        root = self.root or DEFAULT_ROOTS.get(self.name)
        if not root:
            return None
        try:
            return Path(root).expanduser()
        except RuntimeError:  # ~user of no such user: the path as given, which does not exist
            return Path(root)


def _local_init(value: Any) -> Any:
    if isinstance(value, dict):
        raise ValueError(
            f"got {value!r}; a job of the service is named only in specs submitted to it: "
            "give the path of that job's model.pt"
        )
    return value


class ModelSpec(Strict):
    arch: Arch
    # The service widens this field to accept {job: ID} as well (api.service.job_spec).
    init: Annotated[Path_ | None, BeforeValidator(_local_init)] = Field(
        None,
        description="null (random init), 'pretrained' (torchvision ImageNet weights) or the path "
        "of a model.pt state dict",
    )


class LayerLevels(Strict):
    """Levels for the layers a pattern matches: a side given (null = full precision) replaces
    the job's; a side left out keeps it."""

    weight: Levels | None = None
    activation: Levels | None = None

    def given(self) -> dict[str, LevelSet | None]:
        return {side: getattr(self, side) for side in sorted(self.model_fields_set)}

    @model_serializer(mode="wrap")
    def _only_given(self, handler: Any) -> dict[str, Any]:
        # A side left out must stay out of the stored JSON: read back, null would mean float.
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


MAX_LAYER_PATTERNS = 64


# How a step starts: lsq, the paper's rule; mse, the least squared quantization error.
Init = Literal["lsq", "mse"]


class QuantizationSpec(Strict):
    weight: Levels | None = Field(None, description="Weight levels; null = full precision")
    activation: Levels | None = Field(None, description="Activation levels; null = full precision")
    first_last: FirstLast = "float"
    granularity: Literal["per_tensor", "per_channel"] = Field(
        "per_tensor", description="One weight step per layer or per output channel"
    )
    layers: dict[_text(200), LayerLevels] = Field(  # type: ignore[valid-type]
        {},
        max_length=MAX_LAYER_PATTERNS,
        description="Per-layer levels (mixed precision): a glob of module names (`lsq layers "
        "ARCH` lists them) to {weight, activation}; the first pattern that matches a layer "
        "applies, after first_last",
    )
    activation_init: Init = Field(
        "lsq",
        description="How activation steps start, from the first training batch: lsq, the "
        "paper's 2 mean(|x|) / sqrt(Q_P); mse, the step with the least squared quantization "
        "error (bench/accuracy.md compares them)",
    )
    weight_init: Init = Field(
        "lsq",
        description="How weight steps start, from the weights: lsq, the paper's rule; mse, "
        "the step with the least squared quantization error (per channel when steps are)",
    )

    @property
    def enabled(self) -> bool:
        sides = [self.weight, self.activation]
        sides += [v for o in self.layers.values() for v in o.given().values()]
        return any(v is not None for v in sides)

    def levels_by_layer(self, names: Sequence[str]) -> dict[str, Sides]:
        """(weight, activation) levels of each of a network's quantizable layers (`names`, in
        order: the first is its first layer, the last its last), as the conversion applies
        them; None is float. The first layer's unsigned input set is shown unsigned."""
        job = (self.weight, self.activation)
        layers = {p: o.given() for p, o in self.layers.items()}
        roles = {names[0]: "first", names[-1]: "last"} if names else {}
        first_match, out = FirstMatch(layers), {}
        for n in names:
            pattern = first_match(n)
            override = layers[pattern] if pattern is not None else None
            out[n] = layer_levels(roles.get(n), job, self.first_last, override)
        return out

    def describe(self) -> str:
        """E.g. 'W[-1,0,1] A[0,1,2,3], first/last float' or 'full precision'."""
        if not self.enabled:
            return "full precision"
        sides = [f"{k}{v}" for k, v in (("W", self.weight), ("A", self.activation)) if v]
        more = f", {len(self.layers)} per-layer override(s)" if self.layers else ""
        return f"{' '.join(sides) or 'float'}, first/last {self.first_last}{more}"


def _on_off(value: Any) -> Any:
    """YAML 1.1 habits: an unquoted `on` / `off` arrives as true / false."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class DistillOptions(Strict):
    """How a student learns from its teacher (an experiment's `distill` names no teacher: its
    baseline is)."""

    # The LSQ paper's distillation: temperature 1, the two terms weighted equally.
    temperature: float = Field(1.0, gt=0, le=100, description="Softens both distributions")
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the distillation term; 1 - alpha weighs the labels"
    )


class DistillSpec(DistillOptions):
    """Knowledge distillation from a full-precision teacher of the same network."""

    teacher: Annotated[Path_, BeforeValidator(_local_init)] = Field(
        description="'pretrained' or the path of a model.pt of the same arch (the service also "
        "takes {job: ID})"
    )


MAX_BN_BATCHES = 1000


class TrainingSpec(Strict):
    epochs: int = Field(90, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(
        128, ge=1, le=MAX_BATCH, description="Global batch size (split across devices)"
    )
    lr: float = Field(0.01, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, le=1, description="Never applied to step sizes")
    step_lr_scale: float = Field(
        1.0,
        gt=0,
        le=100,
        description="The step sizes' learning rate as a multiple of lr (the paper's: 1)",
    )
    scheduler: Literal["cosine", "cosine_batch", "constant"] = Field(
        "cosine",
        description="cosine: annealed once per epoch (the paper's, over 90 epochs); "
        "cosine_batch: annealed after every batch, reaching 0 at the end",
    )
    warmup_epochs: float = Field(
        0.0,
        ge=0,
        le=MAX_EPOCHS,
        description="Linear warm-up: the lr rises from lr/steps to the schedule's over this many "
        "epochs (fractions allowed, at most epochs; 0: none)",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU"
    )
    devices: int = Field(
        1, ge=1, le=MAX_DEVICES, description="Data-parallel processes on the worker's host"
    )
    distill: DistillSpec | None = Field(
        None, description="Learn from a teacher's softened outputs as well as from the labels"
    )
    bn_reestimate: int = Field(
        100,
        ge=0,
        le=MAX_BN_BATCHES,
        description="After each epoch, re-estimate batch-norm statistics on this many training "
        "batches (at most one pass) with the network as it then is: a quantized network's "
        "running averages can be far off (0: keep them)",
    )
    compile: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = Field(
        "auto",
        description="torch.compile the training step: auto compiles a job long enough for it "
        "to pay (timed on its first batches) and keeps it only if faster",
    )

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_fits(cls, value: float, info: ValidationInfo) -> float:
        epochs = info.data.get("epochs")  # absent when epochs itself was invalid
        if epochs is not None and value > epochs:
            raise ValueError(f"{value:g} epochs is longer than the training's {epochs}")
        return value


# The version of the spec's JSON form. Stored with every job; a change that would make stored
# specs invalid bumps it and adds the function that upgrades the previous version's documents.
# An experiment's base is upgraded the same way (the service's stored_experiment_spec); an
# upgrade that renames a field must also reach its grid and variants' overrides.
SPEC_VERSION = 2


def _bn_reestimate_was_off(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 re-estimates batch norms by default; a version-1 spec without the field ran
    without."""
    training = data.get("training")
    if training is None or isinstance(training, dict):
        data = {**data, "training": {"bn_reestimate": 0, **(training or {})}}
    return data


UPGRADES: dict[int, typing.Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _bn_reestimate_was_off,
}


def upgrade_spec(data: dict[str, Any], version: int) -> dict[str, Any]:
    """A spec document stored at `version`, brought to SPEC_VERSION."""
    for v in range(version, SPEC_VERSION):
        data = UPGRADES[v](data)
    return data


class SensitivitySpec(Strict):
    """Per-layer sensitivity in one job, without training: the network of model.init quantized
    as the spec says, then each probed layer alone quantized (quantize_one) or alone left in
    float (float_one), evaluated on the test set (lsq.sensitivity)."""

    mode: Literal["quantize_one", "float_one"] = Field(
        "quantize_one",
        description="quantize_one: only the probed layer is quantized; float_one: every layer "
        "the spec quantizes but the probed one",
    )
    layers: list[_text(200)] = Field(  # type: ignore[valid-type]
        ["*"],
        min_length=1,
        max_length=MAX_LAYER_PATTERNS,
        description="Globs of the layers to probe, among those the spec quantizes (default all)",
    )

    def probed(self, arch: str, q: QuantizationSpec) -> list[str]:
        """The layers to probe, in network order: those `q` quantizes that a glob matches.
        ValueError names a glob that matches none of them."""
        quantized = [n for n, sides in q.levels_by_layer(layer_names(arch)).items() if any(sides)]
        for glob in self.layers:
            if not any(fnmatchcase(n, glob) for n in quantized):
                raise ValueError(
                    f"{glob[:80]!r} matches no layer this spec quantizes; those of {arch} are "
                    f"{_listed(quantized)}"
                )
        return [n for n in quantized if any(fnmatchcase(n, g) for g in self.layers)]

    def levels_for(self, arch: str, q: QuantizationSpec, layer: str | None) -> dict[str, dict]:
        """`quantization.layers` for a job that probes `layer` by training (one entry per
        layer, by name): what `q` gives each layer, with `layer` alone quantized or alone
        float. None as `layer`: every layer as `q` gives it."""
        out = {}
        for name, (w, a) in q.levels_by_layer(layer_names(arch)).items():
            float_here = name == layer if self.mode == "float_one" else name != layer
            if layer is not None and float_here:
                w = a = None
            out[name] = {"weight": _json(w), "activation": _json(a)}
        return out


def _json(levels: LevelSet | None) -> Any:
    return levels.to_json() if levels is not None else None


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")


def pretrained_cannot_teach(dataset: str) -> str | None:
    """Why torchvision's ImageNet weights cannot teach a network on `dataset`, or None."""
    if dataset == "imagenet":
        return None
    return (
        "'pretrained' is torchvision's ImageNet model, whose head knows ImageNet's classes, "
        f"not {dataset}'s"
    )


class JobSpec(Strict):
    """A quantize-and-evaluate job: dataset, network, constraints, training recipe."""

    name: _text(200)  # type: ignore[valid-type]
    dataset: DatasetSpec
    model: ModelSpec
    quantization: QuantizationSpec = QuantizationSpec()
    training: TrainingSpec = TrainingSpec()
    sensitivity: SensitivitySpec | None = Field(
        None,
        description="Probe each layer's sensitivity instead of training (needs model.init; "
        "training.epochs is not used)",
    )

    @classmethod
    def from_file(cls, path: str | Path, version: int = SPEC_VERSION) -> Self:
        """Read a spec from a YAML or JSON file written at spec `version`; SpecError says what
        is wrong, field by field."""
        try:
            data = upgrade_spec(read_document(path), version)
        except DocumentError as e:
            raise SpecError(str(e)) from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(f"{path} is not a valid job spec", describe_errors(e, cls)) from None

    @model_validator(mode="after")
    def _layer_patterns_match(self) -> Self:
        names = layer_names(self.model.arch)
        first_match = FirstMatch(self.quantization.layers)
        first = {first_match(n) for n in names}
        unused = [p for p in self.quantization.layers if p not in first]
        if unused:
            shown = _listed(names)
            raise ValueError(
                f"quantization.layers: {', '.join(repr(p[:80]) for p in unused[:5])} is the first "
                f"pattern to match no layer of {self.model.arch} (none, or only layers an "
                f"earlier pattern takes); its quantizable layers are {shown} (lsq layers "
                f"{self.model.arch})"
            )
        return self

    @model_validator(mode="after")
    def _teacher_fits(self) -> Self:
        d = self.training.distill
        if d is not None and d.teacher == "pretrained":
            problem = pretrained_cannot_teach(self.dataset.name)
            if problem:
                raise ValueError(f"training.distill.teacher: {problem}: give a model.pt")
        return self

    @model_validator(mode="after")
    def _probe_fits(self) -> Self:
        if self.sensitivity is None:
            return self
        if self.model.init is None:
            raise ValueError("sensitivity: probes a trained network; give model.init")
        if self.training.devices > 1:
            raise ValueError("sensitivity: probes run on one device; set training.devices: 1")
        if not self.quantization.enabled:
            raise ValueError("sensitivity: give quantization the levels to probe each layer at")
        try:
            self.sensitivity.probed(self.model.arch, self.quantization)
        except ValueError as e:
            raise ValueError(f"sensitivity.layers: {e}") from None
        return self

    def describe(self) -> str:
        """E.g. 'fp: resnet20 on cifar10, full precision'."""
        what = self.quantization.describe()
        return f"{self.name}: {self.model.arch} on {self.dataset.name}, {what}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)


# ------------------------------------------------------------------- errors, for both CLIs


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
    key of `quantization.layers`, kept as written: `quantization.layers."layers.0.*".weight`."""
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
