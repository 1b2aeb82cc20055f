"""The job contract: one pydantic model, JobSpec, from the HTTP body to the training loop, and
the models it is made of (dataset, network, quantization, training, sensitivity probe)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from ..archs import ONNX_ARCH, layer_names, patch_side
from ..cost import DATASETS
from ..documents import DocumentError, read_document
from ..levels import FirstMatch, Init, LevelSet, Sides, layer_levels
from ..text import listed
from .dataset import DatasetSpec
from .errors import SpecError, describe_errors
from .fields import (
    MAX_BATCH,
    MAX_BN_BATCHES,
    MAX_DEVICES,
    MAX_EPOCHS,
    MAX_LAYER_PATTERNS,
    MAX_SEED,
    Arch,
    FirstLast,
    Levels,
    Path_,
    Strict,
    bounded_text,
)
from .versions import SPEC_VERSION, upgrade_spec


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
        description="null (random init), 'pretrained' (torchvision ImageNet weights), or the "
        "path of a model.pt state dict or of safetensors weights",
    )
    onnx: Path_ | None = Field(
        None,
        description="With arch 'onnx': the path of an ONNX classifier to quantize (converted "
        "with onnx2torch; its weights are the start)",
    )

    @model_validator(mode="after")
    def _onnx_file(self) -> Self:
        if (self.arch == ONNX_ARCH) != (self.onnx is not None):
            raise ValueError(
                "model.onnx: give it (the ONNX file) exactly when model.arch is 'onnx'"
            )
        if self.onnx is not None and self.init == "pretrained":
            raise ValueError("model.init: an ONNX model brings its own weights; not 'pretrained'")
        return self

    @model_serializer(mode="wrap")
    def _no_empty_onnx(self, handler: Any) -> dict[str, Any]:
        data = handler(self)  # stored specs of named networks stay as they were
        return {k: v for k, v in data.items() if k != "onnx" or v is not None}


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


class QuantizationSpec(Strict):
    weight: Levels | None = Field(None, description="Weight levels; null = full precision")
    activation: Levels | None = Field(None, description="Activation levels; null = full precision")
    first_last: FirstLast = "float"
    granularity: Literal["per_tensor", "per_channel"] = Field(
        "per_tensor",
        description="One weight step per layer or per output channel (a grouped or depthwise "
        "convolution has one per channel either way)",
    )
    layers: dict[bounded_text(200), LayerLevels] = Field(  # type: ignore[valid-type]
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
    activation_offset: bool = Field(
        False,
        description="LSQ+ (Bhalgat et al. 2020): every quantized input learns an offset, "
        "v_hat = q(v - beta) + beta, started with its step at the least squared error on the "
        "first batch; an input that dips below zero keeps its unsigned set instead of taking "
        "the signed one",
    )

    @model_validator(mode="after")
    def _offsets_have_inputs(self) -> Self:
        given = [self.activation] + [o.given().get("activation") for o in self.layers.values()]
        if self.activation_offset and all(a is None for a in given):
            raise ValueError(
                "activation_offset learns where a quantized input's levels start: give "
                "quantization.activation (or a layer's activation) levels, or leave it false"
            )
        return self

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
        description="torch.compile the training step: auto compiles when the steps left save "
        "more than the compile is expected to cost (remembered per graph in the compile cache) "
        "and keeps it only if faster",
    )

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_fits(cls, value: float, info: ValidationInfo) -> float:
        epochs = info.data.get("epochs")  # absent when epochs itself was invalid
        if epochs is not None and value > epochs:
            raise ValueError(f"{value:g} epochs is longer than the training's {epochs}")
        return value


class SensitivitySpec(Strict):
    """Per-layer sensitivity in one job, without training: the network of model.init quantized
    as the spec says, then each probed layer alone quantized (quantize_one) or alone left in
    float (float_one), evaluated on the test set (lsq.sensitivity)."""

    mode: Literal["quantize_one", "float_one"] = Field(
        "quantize_one",
        description="quantize_one: only the probed layer is quantized; float_one: every layer "
        "the spec quantizes but the probed one",
    )
    layers: list[bounded_text(200)] = Field(  # type: ignore[valid-type]
        ["*"],
        min_length=1,
        max_length=MAX_LAYER_PATTERNS,
        description="Globs of the layers to probe, among those the spec quantizes (default all)",
    )

    def probed(self, arch: str, q: QuantizationSpec) -> list[str]:
        """The layers to probe, in network order: those `q` quantizes that a glob matches.
        ValueError names a glob that matches none of them."""
        quantized = [n for n, sides in q.levels_by_layer(known_layers(arch)).items() if any(sides)]
        for glob in self.layers:
            if not any(fnmatchcase(n, glob) for n in quantized):
                raise ValueError(
                    f"{glob[:80]!r} matches no layer this spec quantizes; those of {arch} are "
                    f"{listed(quantized)}"
                )
        return [n for n in quantized if any(fnmatchcase(n, g) for g in self.layers)]

    def levels_for(self, arch: str, q: QuantizationSpec, layer: str | None) -> dict[str, dict]:
        """`quantization.layers` for a job that probes `layer` by training (one entry per
        layer, by name): what `q` gives each layer, with `layer` alone quantized or alone
        float. None as `layer`: every layer as `q` gives it."""
        out = {}
        for name, (w, a) in q.levels_by_layer(known_layers(arch)).items():
            float_here = name == layer if self.mode == "float_one" else name != layer
            if layer is not None and float_here:
                w = a = None
            out[name] = {"weight": _json(w), "activation": _json(a)}
        return out


def _renamed_hint(patterns: list[str]) -> str:
    if not any(p.startswith("layers.") for p in patterns):
        return ""
    return (
        "; a CIFAR ResNet's blocks are named as torchvision's since spec version 3: "
        "layers.N is layer{N // n + 1}.{N % n} with n blocks per stage (ResNet-20: 3)"
    )


def known_layers(arch: str) -> list[str]:
    """`arch`'s quantizable layers; ValueError for a network only a build can list."""
    names = layer_names(arch)
    if names is None:
        raise ValueError(
            f"probing layer by layer needs a network whose layers are known before it is built "
            f"(ours or torchvision's), not {arch[:80]}"
        )
    return names


def _json(levels: LevelSet | None) -> Any:
    return levels.to_json() if levels is not None else None


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

    name: bounded_text(200)  # type: ignore[valid-type]
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
        if names is not None:  # otherwise checked once the network is built (check_layers)
            self.check_layers(names)
        return self

    def check_layers(self, names: Sequence[str]) -> None:
        """ValueError if a `quantization.layers` pattern is the first to match none of the
        network's quantizable layers `names`."""
        first_match = FirstMatch(self.quantization.layers)
        first = {first_match(n) for n in names}
        unused = [p for p in self.quantization.layers if p not in first]
        if unused:
            shown = listed(names)
            shown_unused = ", ".join(repr(p[:80]) for p in unused[:5])
            if len(unused) > 5:
                shown_unused += f" and {len(unused) - 5} more"
            verb = "is the first pattern" if len(unused) == 1 else "are each the first pattern"
            raise ValueError(
                f"quantization.layers: {shown_unused} {verb} to match no layer of "
                f"{self.model.arch} (none, or only layers an earlier pattern takes); its "
                f"quantizable layers are {shown} (lsq layers {self.model.arch})"
                f"{_renamed_hint(unused)}"
            )

    @model_validator(mode="after")
    def _images_fit_the_network(self) -> Self:
        side = self.dataset.image_size or DATASETS[self.dataset.name].size
        patch = patch_side(self.model.arch)
        if patch is not None and side % patch:
            sized = self.dataset.name in ("synthetic", "image_folder")
            fix = (
                f"set dataset.image_size to a multiple of {patch}"
                if sized
                else "choose a network with smaller patches, such as vit_tiny (4 x 4)"
            )
            raise ValueError(
                f"model.arch: {self.model.arch} cuts images into {patch} x {patch} patches, "
                f"and {self.dataset.name}'s {side} px images are no multiple of {patch}: {fix}"
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
