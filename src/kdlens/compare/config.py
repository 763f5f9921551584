"""The config of ``kdlens compare``: one teacher, many distillation methods, the
same data, student initialisation and seeds for all (the IE-KD paper's Table 1
protocol; Table 4's for the mutual-learning rows).

Students train jointly on the task loss plus the method's loss (see
``kdlens.train.joint``), on ``data.student_fraction`` of the training set,
which defaults to all of it here, as in the IE-KD paper. ``sample_rates``
repeats every method at several fractions instead (the IEP paper's Table 1:
the teacher on all the data, the students on 100 / 50 / 25 / 10 % of it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from kdlens.config import (
    MAX_SEED,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    Strict,
    SyntheticData,
    check_device,
    check_models_take_data,
    finite_options,
    image_layer,
    key_error,
    validate,
)
from kdlens.distill import METHODS
from kdlens.distill.base import DistillationMethod
from kdlens.messages import one_line, shown
from kdlens.train.mutual import MutualOptions
from kdlens.yaml_files import read_yaml

BASELINE = "baseline"
LABELS = {"baseline": "Student", "kd": "KD", "at": "AT", "ft": "FT", "od": "OD", "feature_mse": "FitNet-MSE",
          "ie_at": "IE-AT", "ie_ft": "IE-FT", "ie_od": "IE-OD", "dml": "DML", "ie_dml": "IE-DML",
          "iep": "IEP",
          "fitnet": "FitNet", "rkd": "RKD", "sp": "SP", "cc": "CC", "vid": "VID", "pkt": "PKT", "nst": "NST",
          "ab": "AB", "fsp": "FSP", "crd": "CRD", "tf_kd": "Tf-KD", "dkd": "DKD", "mhgd": "MHGD"}
# A label becomes a table header, a Markdown heading, a CSV cell and a folder
# name (see ``label_folder``), so it keeps to characters that are safe in all.
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+()/=,:%-]{0,39}")
LABEL_RULE = "1 to 40 ASCII letters, digits, spaces and - _ . + ( ) / = , : %, starting with a letter or digit"
INDEPENDENT = "Independent"  # the mutual-learning table's row of networks trained alone
MUTUAL_OPTIONS = TypeAdapter(MutualOptions)


def splits_task_loss(method) -> bool:
    """Whether a method that holds the task loss says how to split it off (a gradient balance needs that)."""
    return type(method).distillation_terms is not DistillationMethod.distillation_terms


def check_label(label: Optional[str]) -> Optional[str]:
    if label is not None and not LABEL_PATTERN.fullmatch(label):
        raise ValueError(f"expected {LABEL_RULE}")
    return label


def label_folder(title: str) -> str:
    """The folder a method's runs go to (the runner and the report use it)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", title)


class MethodEntry(Strict):
    name: str
    label: Optional[str] = Field(None, description=LABEL_RULE)
    layer: Optional[str] = Field(None, description="the layer distilled (default: the config's layer)")
    options: dict[str, Any] = Field(default_factory=dict)
    warmup_epochs: Optional[int] = Field(
        None, ge=0, description="epochs over which the method's loss weight ramps up linearly from 1/k of it "
                                "(default: the method's own, 0 for most)")

    balance: Literal["gradient", "none"] = Field(
        "gradient", description="gradient: cap the method's loss so that its gradient is at most the task's, "
                                "calibrated over the first updates (kdlens.train.balance); none: the paper's weight as is")

    _label = field_validator("label")(classmethod(lambda cls, label: check_label(label)))
    _finite_options = field_validator("options")(classmethod(lambda cls, options: finite_options(options)))

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name != BASELINE and name not in METHODS:
            raise ValueError(f"unknown method; expected {BASELINE} or one of {', '.join(METHODS.names())}")
        return name

    _layer = field_validator("layer")(classmethod(lambda cls, layer: None if layer is None else image_layer(layer)))

    @property
    def title(self) -> str:
        return self.label or LABELS.get(self.name, self.name)

    @property
    def ie_variant_of(self) -> Optional[str]:
        """The method this entry is the IE-KD variant of (its declared property), else None."""
        return None if self.name == BASELINE else METHODS.get(self.name).ie_variant_of

    @model_validator(mode="after")
    def _no_layer_for_sensing_points(self) -> "MethodEntry":
        if self.layer is not None and self.name != BASELINE and METHODS.get(self.name).sensing_points:
            raise ValueError(f"{self.name} taps its own sensing points; give options.points instead of layer")
        return self

    @property
    def balanced(self) -> bool:
        """Whether the entry's method trains under a gradient balance: a method
        that controls its gradients itself (IEP) never does."""
        return (self.name != BASELINE and self.balance == "gradient"
                and not METHODS.get(self.name).controls_gradients)

    def resolved_layer(self, default: str) -> str:
        """The entry's layer, else the output for logit methods, else ``default``."""
        if self.layer is not None:
            return self.layer
        return "fc3" if METHODS.get(self.name).distils_logits else default

    def build(self, default_layer: str):
        if METHODS.get(self.name).sensing_points:
            method = METHODS.build(self.name, **self.options)
        else:
            method = METHODS.build(self.name, layer=self.resolved_layer(default_layer), **self.options)
        if self.warmup_epochs is not None:
            if method.includes_task_loss and self.warmup_epochs:
                raise ValueError(f"warmup_epochs = {self.warmup_epochs}: {self.name} holds the task loss itself, "
                                 "which a warm-up would scale too; expected 0")
            method.weight_warmup_epochs = self.warmup_epochs
        return method


class MutualEntry(Strict):
    mode: Literal["dml", "ie_dml"]
    label: Optional[str] = Field(None, description=LABEL_RULE)
    options: dict[str, Any] = Field(default_factory=dict, description="IE-DML: layer, lambda_rec, lambda_inh, ...")

    @field_validator("label")
    @classmethod
    def _label(cls, label: Optional[str]) -> Optional[str]:
        if label == INDEPENDENT:
            raise ValueError(f"{INDEPENDENT!r} names the networks trained alone; expected another label")
        return check_label(label)

    _finite_options = field_validator("options")(classmethod(lambda cls, options: finite_options(options)))

    @model_validator(mode="after")
    def _options(self) -> "MutualEntry":
        allowed = set(MutualOptions.__dataclass_fields__)
        unknown = set(self.options) - allowed
        if unknown:
            raise key_error("options", f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                                       f"expected some of {', '.join(sorted(allowed))}", show_value=False)
        try:
            typed = MUTUAL_OPTIONS.validate_python(self.options)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(["options", *(str(p) for p in error["loc"])])
            raise key_error(where, one_line(error["msg"]).replace("Input should be", "expected"),
                            error["input"]) from None
        self.options = {key: getattr(typed, key) for key in self.options}  # as the runner will use them
        return self

    @property
    def title(self) -> str:
        return self.label or LABELS[self.mode]


class ComparisonAnalysis(Strict):
    """The IE-KD paper's analysis tools (sec. 4.7) on the first seed's models."""

    enabled: bool = True
    relevance_images: int = Field(6, ge=0, description="test images in the LRP heatmap figure")
    samples: int = Field(500, ge=2, description="training images for CKA, active neurons and sharpness")
    energy: float = Field(0.95, gt=0.0, le=1.0, description="share of the gradient energy active neurons hold")
    sharpness_sigmas: list[Annotated[float, Field(ge=0.0)]] = [0.0, 0.01, 0.02, 0.03, 0.04]
    sharpness_draws: int = Field(3, ge=1)
    iep_images_per_class: int = Field(8, ge=1, description="test images per class in the IEP knowledge figures")


class ComparisonExplain(Strict):
    """The knowledge points of every compared student (``kdlens compare --explain``,
    ``kdlens.compare.explain``)."""

    enabled: bool = Field(False, description="measure them (kdlens compare --explain sets it)")
    layer: str = Field("fc1", description="the layer measured (the main paper's first FC layer by default)")
    estimator: Literal["converged", "paper"] = "converged"
    samples: int = Field(8, ge=1, description="training images of the students measured")
    max_epochs: Optional[int] = Field(
        5, ge=2, description="checkpoints measured per student, evenly spaced from the initialisation to the "
                             "last (null: every epoch, which D_mean, D_var and rho are defined over)")
    seed: Optional[int] = Field(None, description="the seed whose students are measured (default: the first)")

    _layer = field_validator("layer")(classmethod(lambda cls, layer: image_layer(layer)))


class CompareConfig(Strict):
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field([0, 1], min_length=1)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    data: DataConfig = SyntheticData(student_fraction=1.0)
    teacher_model: ModelConfig = ModelConfig(arch="vgg11", width=0.5)
    model: ModelConfig = ModelConfig(arch="vgg11", width=0.25)
    teacher: OptimConfig = OptimConfig()
    student: OptimConfig = OptimConfig()
    layer: str = "conv"
    methods: list[MethodEntry] = Field(
        default_factory=lambda: [MethodEntry(name=n) for n in (BASELINE, "kd", "at", "ft", "od", "ie_at", "ie_ft", "ie_od")],
        description="each a method name or {name, label, layer, options}",
    )
    mutual: list[MutualEntry] = Field(default_factory=list, description="dml / ie_dml, or {mode, label, options}")
    sample_rates: Optional[list[float]] = Field(
        None, min_length=1,
        description="train every student at each of these fractions of the training set "
                    "(IEP's Table 1: [1.0, 0.5, 0.25, 0.1]); default: data.student_fraction only",
    )
    analysis: ComparisonAnalysis = ComparisonAnalysis()
    explain: ComparisonExplain = ComparisonExplain()

    @field_validator("data", mode="before")
    @classmethod
    def _whole_training_set(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {"name": "synthetic", "student_fraction": 1.0, **data}
        return data

    _layer = field_validator("layer")(classmethod(lambda cls, layer: image_layer(layer)))
    _device = field_validator("device")(classmethod(lambda cls, name: check_device(name)))

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("expected distinct seeds")
        return seeds

    @model_validator(mode="after")
    def _explained_seed(self) -> "CompareConfig":
        if self.explain.seed is not None and self.explain.seed not in self.seeds:
            raise key_error("explain.seed", f"expected one of the seeds {self.seeds}", self.explain.seed)
        return self

    @field_validator("sample_rates")
    @classmethod
    def _rates(cls, rates: Optional[list[float]]) -> Optional[list[float]]:
        if rates is None:
            return rates
        bad = [r for r in rates if not 0.0 < r <= 1.0]
        if bad:
            raise ValueError(f"rates {bad}: expected fractions in (0, 1]")
        if len(set(rates)) != len(rates):
            raise ValueError("expected distinct rates")
        return rates

    @property
    def rates(self) -> list[float]:
        """The students' fractions of the training set, the main (first) one first."""
        return list(self.sample_rates) if self.sample_rates else [self.data.student_fraction]

    @property
    def ie_pairs(self) -> list[tuple[str, str]]:
        """(IE variant's title, its base method's title) for every IE-KD entry
        whose base method is compared too, from the methods' declared property
        ``ie_variant_of`` (not their labels, which a config may rename)."""
        by_name = {entry.name: entry.title for entry in self.methods}
        return [(entry.title, by_name[entry.ie_variant_of]) for entry in self.methods
                if entry.ie_variant_of is not None and entry.ie_variant_of in by_name]

    @property
    def ie_titles(self) -> list[str]:
        """The titles of the IE-KD entries."""
        return [entry.title for entry in self.methods if entry.ie_variant_of is not None]

    @field_validator("methods", mode="before")
    @classmethod
    def _method_names(cls, methods: Any) -> Any:
        return [{"name": m} if isinstance(m, str) else m for m in methods] if isinstance(methods, list) else methods

    @field_validator("mutual", mode="before")
    @classmethod
    def _mutual_names(cls, mutual: Any) -> Any:
        return [{"mode": m} if isinstance(m, str) else m for m in mutual] if isinstance(mutual, list) else mutual

    @field_validator("methods", "mutual")
    @classmethod
    def _unique(cls, entries: list, info) -> list:
        titles = [e.title for e in entries]
        repeated = sorted({t for t in titles if titles.count(t) > 1})
        if repeated:
            raise key_error("", f"{', '.join(repeated)} listed twice; give each a distinct label", show_value=False)
        folders: dict[str, str] = {}
        for title in titles:  # one folder per method, on case-insensitive file systems too
            other = folders.setdefault(label_folder(title).lower(), title)
            if other != title:
                raise key_error("", f"labels {other!r} and {title!r} would share the folder "
                                    f"{label_folder(title)!r}; expected labels that differ in more than case, "
                                    "spaces or punctuation", show_value=False)
        return entries

    @model_validator(mode="after")
    def _methods_build(self) -> "CompareConfig":
        for entry in self.methods:
            if entry.name == BASELINE:
                continue
            try:
                method = entry.build(self.layer)
            except (TypeError, ValueError, ArithmeticError) as exc:  # what the options make the method raise
                raise ValueError(f"methods: {entry.title}: options {shown(entry.options)}: {one_line(exc)}") from None
            if entry.balanced and method.includes_task_loss and not splits_task_loss(method):
                raise ValueError(f"methods: {entry.title}: {entry.name} holds the task loss and does not split it "
                                 "from its distillation term; expected balance: none for it")
        for mutual in self.mutual:
            options = {"layer": self.layer, **mutual.options}
            try:
                image_layer(options["layer"])
                if not options.get("lambda_rec", 0.0) >= 0:
                    raise ValueError(f"lambda_rec = {options['lambda_rec']!r}: expected >= 0")
                if mutual.mode == "ie_dml":
                    options.pop("lambda_rec", None)
                    METHODS.build("ie_ft", **options)
            except (TypeError, ValueError, ArithmeticError) as exc:  # what the options make the method raise
                raise ValueError(f"mutual: {mutual.title}: options {shown(mutual.options)}: {one_line(exc)}") from None
        if BASELINE not in [e.name for e in self.methods]:
            raise ValueError(f"methods: expected {BASELINE!r} among them (every method is compared with it)")
        return self

    @model_validator(mode="after")
    def _images_only(self) -> "CompareConfig":
        # The comparison's analysis tools (LRP relevance, CKA and active neurons
        # on feature maps) are written for images; point clouds go through
        # kdlens train / analyze / demo --modality points.
        if getattr(self.data, "modality", "image") != "image":
            raise ValueError(f"data.name = {self.data.name!r}: kdlens compare handles images only; expected an "
                             "image dataset (synthetic, cub, folder, cifar10, cifar100)")
        check_models_take_data(self.data, {"model": self.model, "teacher_model": self.teacher_model})
        return self

    def experiment(self, seed: int) -> ExperimentConfig:
        """The single-run config that builds this comparison's data and networks."""
        return ExperimentConfig(seed=seed, device=self.device, data=self.data, model=self.model,
                                teacher_model=self.teacher_model, teacher=self.teacher, baseline=self.student)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_compare_config(raw: Any, source: str = "config") -> CompareConfig:
    return validate(CompareConfig, raw, source)


def load_compare_config(path: str | Path) -> CompareConfig:
    return parse_compare_config(read_yaml(path), source=str(path))


def dump_compare_config(config: CompareConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
