"""Typed experiment configs, loaded from YAML and validated on load.

Every mistake is reported as one line that names the key, the value and what
was expected, e.g. ``config.yaml: data.image_size = 'big': expected a valid
integer``. The resolved config (all defaults filled in) is what a run writes to
its directory, so any result can be traced back to what made it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdlens.distill import METHODS
from kdlens.models import MODELS, PAPER_LAYERS

ROLES = ("teacher", "baseline", "student")
Schema = TypeVar("Schema", bound=BaseModel)


def paper_layer(layer: str) -> str:
    """``layer`` if the models have it, else a ValueError naming it."""
    if layer not in PAPER_LAYERS:
        raise ValueError(f"the models have no layer {layer!r}; expected one of {', '.join(PAPER_LAYERS)}")
    return layer


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataCommon(Strict):
    student_fraction: float = Field(
        0.1, gt=0.0, le=1.0,
        description="Share of the training set the student and baseline see (the paper: 10%).",
    )
    num_workers: int = Field(0, ge=0)


class SyntheticData(DataCommon):
    name: Literal["synthetic"] = "synthetic"
    image_size: int = Field(32, ge=16)
    num_classes: int = Field(10, ge=2)
    train_size: int = Field(5000, ge=1)
    test_size: int = Field(1000, ge=1)
    distractors: int = Field(0, ge=0, description="most distractor shapes, of families not used as classes")
    spurious_strength: float = Field(0.0, ge=0.0, le=1.0)
    noise: float = Field(0.05, ge=0.0)
    object_size: tuple[float, float] = Field(
        (0.7, 0.95), description="range of the object's bounding-circle diameter, as a share of the image side"
    )
    cue: Literal["object", "background"] = Field(
        "object", description="object: the label is the object's shape; background: the background colour "
        "(in both splits), with an object of a random class"
    )

    @field_validator("object_size")
    @classmethod
    def _object_size(cls, size: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < size[0] <= size[1] <= 1.0:
            raise ValueError("expected [low, high] with 0 < low <= high <= 1")
        return size

    @model_validator(mode="after")
    def _cue_alone(self) -> "SyntheticData":
        if self.cue == "background" and self.spurious_strength != 0:
            raise ValueError(
                f"data.spurious_strength = {self.spurious_strength!r}: expected 0 with data.cue = 'background', "
                "whose background already carries the label in both splits"
            )
        return self


class _RealData(DataCommon):
    path: Path
    image_size: int = Field(224, ge=16)

    @field_validator("path")
    @classmethod
    def _exists(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(f"directory {str(path)!r} does not exist; expected the dataset root")
        return path


class CubData(_RealData):
    name: Literal["cub"]
    mask_source: Literal["auto", "segmentation", "bbox"] = "auto"
    bbox_crop: Optional[float] = Field(None, gt=0.0)


class FolderData(_RealData):
    name: Literal["folder"]


DataConfig = Annotated[Union[SyntheticData, CubData, FolderData], Field(discriminator="name")]


class ModelConfig(Strict):
    arch: str = "vgg11"
    width: float = Field(1.0, gt=0.0)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    linear_init: Literal["normal", "pytorch"] = Field(
        "normal",
        description="normal: N(0, 0.01) as torchvision's VGG (the knowledge-points paper); pytorch: "
        "nn.Linear's own default, whose larger head passes the task gradient down from the first step",
    )

    @field_validator("arch")
    @classmethod
    def _known(cls, arch: str) -> str:
        if arch not in MODELS:
            raise ValueError(f"unknown architecture; expected one of {', '.join(MODELS.names())}")
        return arch


class OptimConfig(Strict):
    """SGD with a learning-rate schedule (the paper trains with SGD, batch 64)."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_size: int = Field(10, ge=1, description="epochs between decays for schedule=step")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="decay factor for schedule=step")


class StudentConfig(Strict):
    """Feature distillation from one layer (Sec. 4.1 of the knowledge-points paper):
    phase 1 trains the layers up to ``layer`` with ||f_T(x) - f_S(x)||^2 alone,
    phase 2 trains the layers above it with the classification loss alone."""

    layer: str = "fc1"
    method: str = "feature_mse"
    method_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the method, e.g. {reduction: mean}"
    )
    # The summed distillation loss has gradients about feature-size times a
    # cross-entropy's: a larger rate kills the student's ReLUs at the layer.
    distill: OptimConfig = OptimConfig(lr=0.003)
    classify: OptimConfig = OptimConfig()
    teacher_checkpoint: Optional[Path] = None

    _layer = field_validator("layer")(classmethod(lambda cls, layer: paper_layer(layer)))

    @field_validator("method")
    @classmethod
    def _method(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown distillation method; expected one of {', '.join(METHODS.names())}")
        if METHODS.get(method).sensing_points:
            raise ValueError(
                f"{method} taps several sensing points and trains with the task loss, which the two-phase "
                "student protocol of `kdlens train` does not; run it with `kdlens compare` "
                "(e.g. configs/compare-iep-synthetic.yaml)"
            )
        return method

    @model_validator(mode="after")
    def _method_builds(self) -> "StudentConfig":
        try:
            METHODS.build(self.method, layer=self.layer, **self.method_options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"student.method_options = {self.method_options!r}: {exc}") from None
        return self

    @field_validator("teacher_checkpoint")
    @classmethod
    def _checkpoint(cls, path: Optional[Path]) -> Optional[Path]:
        if path is not None and not path.is_file():
            raise ValueError(f"file {str(path)!r} does not exist; expected a teacher checkpoint (.pt)")
        return path


class AnalysisConfig(Strict):
    """How ``kdlens demo`` (``run_experiment``) measures knowledge points; ``kdlens analyze`` takes flags.
    A run directory keeps its config without this section (``dump_config(training_only=True)``)."""

    estimators: list[Literal["converged", "paper"]] = Field(
        ["converged"], min_length=1,
        description="converged: kdlens's optimum of Eq. 4; paper: the authors' recipe. The first is the primary one",
    )
    baseline: Literal["sample", "dataset"] = Field(
        "sample", description="H_bar per sample (the paper's text) or averaged over the analysed samples (the authors' code)"
    )
    samples: int = Field(16, ge=1)
    grid: int = Field(16, ge=1)
    paper_final_only: bool = Field(
        False, description="measure the paper estimator at the last checkpoint of each model only (it costs 4-6x more)"
    )

    @field_validator("estimators")
    @classmethod
    def _distinct(cls, estimators: list[str]) -> list[str]:
        if len(set(estimators)) != len(estimators):
            raise ValueError("expected each estimator at most once")
        return estimators


class ExperimentConfig(Strict):
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    train: list[Literal["teacher", "baseline", "student"]] = list(ROLES)
    data: DataConfig = SyntheticData()
    model: ModelConfig = ModelConfig()
    teacher_model: Optional[ModelConfig] = Field(
        None, description="teacher architecture when it differs from the student's"
    )
    teacher: OptimConfig = OptimConfig()
    baseline: OptimConfig = OptimConfig()
    student: StudentConfig = StudentConfig()
    analysis: AnalysisConfig = AnalysisConfig()

    @field_validator("data", mode="before")
    @classmethod
    def _default_dataset(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data:
            return {"name": "synthetic", **data}
        return data

    @property
    def resolved_teacher_model(self) -> ModelConfig:
        return self.teacher_model or self.model

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_DATA_VARIANTS = {"synthetic": SyntheticData, "cub": CubData, "folder": FolderData}


def _expected_keys(loc: tuple, root: type[BaseModel]) -> list[str]:
    """The keys allowed where ``loc`` points, for an unknown-key message."""
    node: Any = root
    for part in loc[:-1]:
        if part in _DATA_VARIANTS:
            node = _DATA_VARIANTS[part]
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
            members = [a for a in getattr(node, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(members) == 1:  # Optional[Model]
                node = members[0]
        else:
            return []
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def describe_error(error: dict, root: type[BaseModel]) -> str:
    """One line for a pydantic error: the key, the value, what was expected."""
    loc, kind = tuple(error["loc"]), error["type"]
    # Discriminated unions put the variant's tag in the path; a reader never wrote it.
    key = ".".join(str(p) for p in loc if p not in _DATA_VARIANTS) or "config"
    if kind == "extra_forbidden":
        allowed = _expected_keys(loc, root)
        return f"unknown key {key!r}" + (f"; expected one of {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return f"{key} is missing; it is required"
    if kind.startswith("union_tag"):
        value = error["input"].get("name") if isinstance(error["input"], dict) else error["input"]
        return f"{key}.name = {value!r}: expected one of {', '.join(_DATA_VARIANTS)}"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
    if kind == "value_error" and (message.startswith(key) or not loc):  # a cross-field check names its own key
        return message
    return f"{key} = {error['input']!r}: {message}"


def validate(schema: type[Schema], raw: Any, source: str = "config") -> Schema:
    """Validate a mapping into ``schema`` or raise a one-line :class:`ConfigError`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {describe_error(errors[0], schema)}{more}") from None


def parse_config(raw: Any, source: str = "config") -> ExperimentConfig:
    """Validate a mapping into an :class:`ExperimentConfig` or raise :class:`ConfigError`."""
    return validate(ExperimentConfig, raw, source)


def read_yaml(path: str | Path) -> Any:
    """A config file's contents, or a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def load_config(path: str | Path) -> ExperimentConfig:
    return parse_config(read_yaml(path), source=str(path))


def dump_config(config: ExperimentConfig, training_only: bool = False) -> str:
    """The resolved config as YAML; ``training_only`` leaves out ``analysis``,
    which does not change what training makes (a run directory keeps this
    form, so measuring it another way never blocks resuming its training)."""
    data = config.to_dict()
    if training_only:
        data.pop("analysis", None)
    return yaml.safe_dump(data, sort_keys=False)
