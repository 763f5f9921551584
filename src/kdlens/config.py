"""Typed experiment configs, loaded from YAML and validated on load.

Every mistake is reported as one line that names the key, the value and what
was expected, e.g. ``config.yaml: data.image_size = 'big': expected a valid
integer``. The resolved config (all defaults filled in) is what a run writes to
its directory, so any result can be traced back to what made it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kdlens.distill import METHODS
from kdlens.errors import ConfigError
from kdlens.messages import one_line, shown
from kdlens.yaml_files import is_kind, read_yaml
from kdlens.models import MODELS, PAPER_LAYERS, input_kind

ROLES = ("teacher", "baseline", "student")
Schema = TypeVar("Schema", bound=BaseModel)
MAX_SEED = 2**63 - 1
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
DEVICES = "auto, cpu, cuda, cuda:N or mps"

def check_device(name: str) -> str:
    """``name`` if it has the form of a device kdlens can run on; where it is available is decided at run time."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"expected {DEVICES}")
    return name


def _walk(value: Any, path: str = ""):
    """Every ``(key path, item)`` of a nest of mappings and lists, containers
    included; shared and recursive parts (YAML aliases) are entered once."""
    seen: set[int] = set()
    pending = [(path, value)]
    while pending:
        where, item = pending.pop()
        yield where, item
        if isinstance(item, (dict, list, tuple)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            pending.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(list(pairs)))


def non_finite(value: Any, path: str = "") -> Optional[tuple[str, float]]:
    """The first ``(key path, number)`` in a nest of mappings and lists whose
    number is infinite or NaN, else None."""
    return next(((where, item) for where, item in _walk(value, path)
                 if isinstance(item, float) and not math.isfinite(item)), None)


def key_error(inner: str, expected: str, value: Any = None, *, show_value: bool = True) -> PydanticCustomError:
    """An error a validator raises about ``inner``, a key below the one it
    validates (``""``: that key itself); :func:`describe_error` puts the full key
    in front: ``student.method_options.temperature = inf: expected ...``."""
    return PydanticCustomError("kdlens_key", "{inner}: {expected}", {
        "inner": inner, "expected": one_line(expected), "value": shown(value) if show_value else None,
    })


PLAIN = (str, int, float, bool, type(None), dict, list, tuple)


def not_plain(value: Any, path: str = "") -> Optional[tuple[str, Any]]:
    """The first ``(key path, value)`` in a nest of mappings and lists that is not
    a plain YAML value (a string, number, true/false, null, list or mapping; YAML's
    ``!!binary`` gives bytes, for example), else None."""
    return next(((where, item) for where, item in _walk(value, path) if not isinstance(item, PLAIN)), None)


def finite_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (free-form keyword arguments) if every value in them is plain and every number finite."""
    odd = not_plain(options)
    if odd is not None:
        raise key_error(odd[0], f"expected a string, number, true/false, list or mapping, not "
                        f"{type(odd[1]).__name__}", odd[1])
    found = non_finite(options)
    if found is not None:
        raise key_error(found[0], "expected a finite number", found[1])
    return options


def _number_type(annotation: Any) -> bool:
    """Whether ``annotation`` is int or float, possibly Optional or in a list/tuple."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) is Annotated:
        return _number_type(get_args(annotation)[0])
    if get_origin(annotation) in (Union, list, tuple):
        return any(_number_type(a) for a in get_args(annotation) if a is not type(None) and a is not Ellipsis)
    return False


def dataset_root(path: Path) -> Path:
    """``path`` if it is a directory (where a dataset on disk is read from)."""
    if not is_kind(path, "dir"):
        raise ValueError(f"directory {shown(str(path))} does not exist; expected the dataset root")
    return path


def check_models_take_data(data: Any, models: dict[str, Optional["ModelConfig"]]) -> None:
    """A ValueError unless every model given takes the kind of input ``data`` holds (images, point clouds)."""
    kind = getattr(data, "modality", "image")
    for key, model in models.items():
        if model is not None and input_kind(model.arch) != kind:
            raise ValueError(f"{key}.arch = {model.arch!r} takes {input_kind(model.arch)} input, but "
                             f"data.name = {data.name!r} holds {kind}; expected a model for {kind}")


# the named layers of the text models (kdlens.models.bert): embeddings, layer1 .. layerL, then pooler and
# classifier (bert) or spans (bert_qa)
TEXT_LAYER = re.compile(r"embeddings|layer[1-9][0-9]*|pooler|classifier|spans")
TEXT_LAYERS = "embeddings, layer1 .. layerL, pooler, classifier (bert) or spans (bert_qa)"


def paper_layer(layer: str) -> str:
    """``layer`` if some model family has it (the image and point models' conv / fc1 /
    fc2 / fc3, or a text model's layers), else a ValueError naming it; whether the
    configured models have it is checked with the data (:func:`check_layers_fit_data`)."""
    if layer not in PAPER_LAYERS and not TEXT_LAYER.fullmatch(layer):
        raise ValueError(f"the models have no layer {layer!r}; expected one of {', '.join(PAPER_LAYERS)} "
                         f"(images, point clouds) or, for text, {TEXT_LAYERS}")
    return layer


def check_text_models(data: Any, models: dict[str, Optional["ModelConfig"]]) -> None:
    """A ValueError unless the text models fit the text data: ``bert_qa`` exactly for
    SQuAD's spans, a pretrained network with its own tokenizer, and BERT's own
    initialisation kept. A dropout not given becomes BERT's 0.1 (the image models' 0.5 is not)."""
    spans = getattr(data, "spans", False)
    for key, model in models.items():
        if model is None:
            continue
        if spans != (model.arch == "bert_qa"):
            expected = "bert_qa (one class per answer span)" if spans else "a sentence classifier (bert)"
            raise ValueError(f"{key}.arch = {model.arch!r} with data.name = {data.name!r}: expected {expected}")
        if model.linear_init == "pytorch":
            raise ValueError(f"{key}.linear_init = 'pytorch' would re-draw every linear layer of a BERT (its "
                             "attention and feed-forward too, and pretrained weights); expected 'normal', which "
                             "keeps transformers' own initialisation")
        if model.options.get("pretrained") is not None and data.tokenizer is None:
            raise ValueError(f"{key}.options.pretrained is set but data.tokenizer is not; expected the pretrained "
                             "model's tokenizer directory (its vocab.txt or tokenizer.json), whose ids its "
                             "embeddings were trained on")
        if "dropout" not in model.model_fields_set:
            model.dropout = 0.1


def image_layer(layer: str) -> str:
    """``layer`` if the image (and point) models have it, else a ValueError naming it."""
    if layer not in PAPER_LAYERS:
        raise ValueError(f"the models have no layer {layer!r}; expected one of {', '.join(PAPER_LAYERS)}")
    return layer


def check_layers_fit_data(data: Any, layers: dict[str, Optional[str]]) -> None:
    """A ValueError unless each named layer is one of the models for ``data``'s kind."""
    text = getattr(data, "modality", "image") == "text"
    for key, layer in layers.items():
        if layer is None:
            continue
        if text and not TEXT_LAYER.fullmatch(layer):
            raise ValueError(f"{key} = {layer!r}: the text models' layers are {TEXT_LAYERS} (the paper "
                             "measures the last hidden layer, layerL)")
        if not text and layer not in PAPER_LAYERS:
            raise ValueError(f"{key} = {layer!r}: expected one of {', '.join(PAPER_LAYERS)} for {data.name!r} data")


class Strict(BaseModel):
    """Every config section: unknown keys, infinities and NaN are refused, and so
    are true/false where a number goes (YAML reads `yes` as true)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        for name, field in cls.model_fields.items():
            value = raw.get(name)
            items = value if isinstance(value, (list, tuple)) else [value]
            if _number_type(field.annotation) and any(isinstance(item, bool) for item in items):
                raise key_error(name, "expected a number, not true/false", value)
        return raw


class DataCommon(Strict):
    student_fraction: float = Field(
        0.1, gt=0.0, le=1.0,
        description="Share of the training set the student and baseline see (the paper: 10%).",
    )
    num_workers: int = Field(0, ge=0)

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        """The keyword arguments of this section's dataset (``DATASETS[name]``) for ``split``."""
        raise NotImplementedError


class _ImageData(DataCommon):
    """What every image data section shares: the training batches' augmentation
    (``kdlens.data.augment``; evaluation never sees it)."""

    augment: Literal["none", "crop_flip"] = Field(
        "none", description="crop_flip: pad by crop_padding with black, crop back to the image size at a random "
        "offset and flip horizontally with p = 0.5, per training image (the standard CIFAR augmentation)")
    crop_padding: int = Field(4, ge=0, description="pixels of black padding on each side before the random crop")


class SyntheticData(_ImageData):
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

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return dict(num_samples=self.train_size if split == "train" else self.test_size, image_size=self.image_size,
                    num_classes=self.num_classes, seed=seed, distractors=self.distractors,
                    spurious_strength=self.spurious_strength, noise=self.noise, object_size=tuple(self.object_size),
                    cue=self.cue)

    @model_validator(mode="after")
    def _cue_alone(self) -> "SyntheticData":
        if self.cue == "background" and self.spurious_strength != 0:
            raise ValueError(
                f"data.spurious_strength = {self.spurious_strength!r}: expected 0 with data.cue = 'background', "
                "whose background already carries the label in both splits"
            )
        return self


class _RealData(_ImageData):
    path: Path
    image_size: int = Field(224, ge=16)

    _root = field_validator("path")(classmethod(lambda cls, path: dataset_root(path)))

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return dict(root=self.path, image_size=self.image_size)


class CubData(_RealData):
    name: Literal["cub"]
    mask_source: Literal["auto", "segmentation", "bbox"] = "auto"
    bbox_crop: Optional[float] = Field(None, gt=0.0)

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return {**super().dataset_options(split, seed), "mask_source": self.mask_source, "bbox_crop": self.bbox_crop}


class FolderData(_RealData):
    name: Literal["folder"]


class _CifarData(_RealData):
    """CIFAR's python files under ``path`` (``kdlens.data.cifar``)."""

    image_size: int = Field(32, ge=16, description="32: CIFAR's own size; another: a bilinear resize")


class Cifar10Data(_CifarData):
    name: Literal["cifar10"]


class Cifar100Data(_CifarData):
    name: Literal["cifar100"]
    label_kind: Literal["fine", "coarse"] = Field(
        "fine", description="fine: the 100 classes; coarse: the 20 superclasses")

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return {**super().dataset_options(split, seed), "label_kind": self.label_kind}


class _PointData(DataCommon):
    """Point clouds with the paper's background points attached (Sec. 4.1): to
    every object cloud, ``background_points`` points drawn from
    ``background_clouds`` clouds of other classes."""

    modality: ClassVar[str] = "points"
    num_points: int = Field(512, ge=1, description="points of the object's cloud")
    background_points: int = Field(500, ge=0, description="background points attached (the paper: 500)")
    background_clouds: int = Field(5, ge=1, description="clouds of other classes they come from (the paper: 5)")

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return dict(num_points=self.num_points, seed=seed, background_points=self.background_points,
                    background_clouds=self.background_clouds)


class PointShapesData(_PointData):
    name: Literal["point_shapes"]
    num_classes: int = Field(6, ge=2)
    train_size: int = Field(3000, ge=1)
    test_size: int = Field(600, ge=1)
    noise: float = Field(0.01, ge=0.0)
    cue: Literal["object", "background"] = Field(
        "object", description="object: the label is the object's shape; background: the background clouds' "
        "shape, with an object of a random class")

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return {**super().dataset_options(split, seed), "num_classes": self.num_classes, "noise": self.noise,
                "cue": self.cue, "num_samples": self.train_size if split == "train" else self.test_size}


class ModelNetData(_PointData):
    name: Literal["modelnet40"]
    path: Path
    num_points: int = Field(1024, ge=1, description="points of the object's cloud")
    layout: Literal["auto", "hdf5", "off"] = "auto"

    _root = field_validator("path")(classmethod(lambda cls, path: dataset_root(path)))

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return {**super().dataset_options(split, seed), "root": self.path, "layout": self.layout}


class _TextData(DataCommon):
    """Sentences whose units are words (the paper's SST-2 with BERT, Sec. 4.1):
    each padded to ``max_tokens`` word pieces; the tokenizer is trained on the
    training sentences unless ``tokenizer`` names a local directory (a
    pretrained BERT's ``vocab.txt`` or a ``tokenizer.json``)."""

    modality: ClassVar[str] = "text"
    max_tokens: int = Field(32, ge=4, description="word pieces per sentence, [CLS] and [SEP] included")
    vocab_size: int = Field(900, ge=16, description="size of the WordPiece vocabulary trained on the data")
    tokenizer: Optional[Path] = Field(None, description="a local tokenizer directory instead of training one")

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        from kdlens.data.text_encoding import load_tokenizer

        tokenizer = None if self.tokenizer is None else load_tokenizer(self.tokenizer)
        return dict(max_tokens=self.max_tokens, vocab_size=self.vocab_size, tokenizer=tokenizer)

    def model_options(self) -> dict[str, Any]:
        """What a text model must be sized for: the vocabulary and padding id (the given
        tokenizer's, or ``vocab_size`` and 0 for the one trained; ``build_datasets``
        refuses a trained one that came out larger) and the sentence length."""
        if self.tokenizer is None:
            return {"vocab_size": self.vocab_size, "max_tokens": self.max_tokens, "pad_id": 0}
        from kdlens.data.text_encoding import load_tokenizer, pad_id

        tokenizer = load_tokenizer(self.tokenizer)
        return {"vocab_size": tokenizer.get_vocab_size(), "max_tokens": self.max_tokens, "pad_id": pad_id(tokenizer)}


class SentencesData(_TextData):
    name: Literal["sentences"]
    train_size: int = Field(4000, ge=1)
    test_size: int = Field(1000, ge=1)
    cue: Literal["sentiment", "filler"] = Field(
        "sentiment", description="sentiment: the planted sentiment words tell the label; filler: a neutral "
        "word tied to the label does, and the sentiment words' polarity is random")

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return {**super().dataset_options(split, seed), "seed": seed, "cue": self.cue,
                "num_samples": self.train_size if split == "train" else self.test_size}


class _TextFiles(_TextData):
    """Text read from ``path``, whose labelled test set is its dev split (GLUE's
    SST-2 test.tsv has no labels; SQuAD's test set is hidden)."""

    path: Path
    vocab_size: int = Field(8000, ge=16, description="size of the WordPiece vocabulary trained on the data")

    _root = field_validator("path")(classmethod(lambda cls, path: dataset_root(path)))

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return {**super().dataset_options(split, seed), "root": self.path,
                "split": "train" if split == "train" else "dev"}


class SST2Data(_TextFiles):
    name: Literal["sst2"]
    max_tokens: int = Field(64, ge=4, description="word pieces per sentence, [CLS] and [SEP] included")
    lexicon_threshold: float = Field(1.0, gt=0.0, description="|VADER valence| that makes a word foreground")

    def dataset_options(self, split: str, seed: int) -> dict[str, Any]:
        return {**super().dataset_options(split, seed), "lexicon_threshold": self.lexicon_threshold}


class SquadData(_TextFiles):
    """SQuAD v1.1 (``train-v1.1.json``, ``dev-v1.1.json`` under ``path``): the
    answer's words are the foreground; one class per (start, end) span, so the
    model is ``bert_qa``."""

    spans: ClassVar[bool] = True
    name: Literal["squad"]
    max_tokens: int = Field(128, ge=4, description="word pieces of question and context, special tokens included")


DataConfig = Annotated[Union[SyntheticData, CubData, FolderData, Cifar10Data, Cifar100Data, PointShapesData,
                             ModelNetData, SentencesData, SST2Data, SquadData],
                       Field(discriminator="name")]


class ModelConfig(Strict):
    arch: str = "vgg11"
    width: float = Field(1.0, gt=0.0)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    options: dict[str, Any] = Field(
        default_factory=dict, description="the family's own options, e.g. bert's {hidden: 64, layers: 2, heads: 2} "
        "or {pretrained: DIR}, VGG's {batch_norm: false}")

    _finite_options = field_validator("options")(classmethod(lambda cls, options: finite_options(options)))
    linear_init: Literal["normal", "pytorch"] = Field(
        "normal",
        description="normal: the family's own initialisation (N(0, 0.01) for the paper's VGG, AlexNet and ResNet "
        "heads, as torchvision's VGG; RepDistiller's for its CIFAR networks); pytorch: nn.Linear's own default, "
        "whose larger head passes the task gradient down from the first step",
    )

    @field_validator("arch")
    @classmethod
    def _known(cls, arch: str) -> str:
        if arch not in MODELS:
            raise ValueError(f"unknown architecture; expected one of {', '.join(MODELS.names())}")
        return arch


class OptimConfig(Strict):
    """SGD (the paper trains with SGD, batch 64), Adam (PointNet's reference
    recipe) or AdamW (BERT's), with a learning-rate schedule and an optional warm-up."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "sgd", description="sgd (the paper's), adam (PointNet's reference recipe) or adamw (transformers')")
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD's momentum (Adam keeps its betas 0.9, 0.999)")
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_size: int = Field(10, ge=1, description="epochs between decays for schedule=step")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="decay factor for schedule=step")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear learning-rate warm-up before the schedule "
                               "(transformers train with one)")


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
        except (TypeError, ValueError, ArithmeticError) as exc:  # what the options make the method raise
            raise ValueError(f"student.method_options = {shown(self.method_options)}: {one_line(exc)}") from None
        return self

    _finite_options = field_validator("method_options")(classmethod(lambda cls, options: finite_options(options)))

    @field_validator("teacher_checkpoint")
    @classmethod
    def _checkpoint(cls, path: Optional[Path]) -> Optional[Path]:
        if path is not None and not is_kind(path, "file"):
            raise ValueError(f"file {shown(str(path))} does not exist; expected a teacher checkpoint (.pt)")
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
    layers: Optional[list[str]] = Field(
        None, min_length=1, description="the layers measured; by default the distilled one (student.layer)"
    )
    samples: int = Field(16, ge=1)
    grid: int = Field(16, ge=1)
    max_epochs: Optional[int] = Field(
        None, ge=2, description="measure at most this many checkpoints per model, evenly spaced (the first and the "
        "last included); D_mean, D_var and rho are then over those only. Default: every checkpoint"
    )
    paper_final_only: bool = Field(
        False, description="measure the paper estimator at the last checkpoint of each model only (it costs 4-6x more)"
    )

    @field_validator("estimators")
    @classmethod
    def _distinct(cls, estimators: list[str]) -> list[str]:
        if len(set(estimators)) != len(estimators):
            raise ValueError("expected each estimator at most once")
        return estimators

    @field_validator("layers")
    @classmethod
    def _paper_layers(cls, layers: Optional[list[str]]) -> Optional[list[str]]:
        if layers is not None and len(set(layers)) != len(layers):
            raise ValueError("expected each layer at most once")
        return layers if layers is None else [paper_layer(layer) for layer in layers]


class ExperimentConfig(Strict):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
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

    _device = field_validator("device")(classmethod(lambda cls, name: check_device(name)))

    @field_validator("data", mode="before")
    @classmethod
    def _default_dataset(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data:
            return {"name": "synthetic", **data}
        return data

    @model_validator(mode="after")
    def _models_take_the_data(self) -> "ExperimentConfig":
        check_models_take_data(self.data, {"model": self.model, "teacher_model": self.teacher_model})
        if getattr(self.data, "modality", "image") == "text":
            check_text_models(self.data, {"model": self.model, "teacher_model": self.teacher_model})
        check_layers_fit_data(self.data, {"student.layer": self.student.layer,
                                          **{f"analysis.layers[{k}]": layer
                                             for k, layer in enumerate(self.analysis.layers or [])}})
        return self

    @property
    def resolved_teacher_model(self) -> ModelConfig:
        return self.teacher_model or self.model

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_DATA_VARIANTS = {"synthetic": SyntheticData, "cub": CubData, "folder": FolderData, "cifar10": Cifar10Data,
                  "cifar100": Cifar100Data, "point_shapes": PointShapesData, "modelnet40": ModelNetData,
                  "sentences": SentencesData, "sst2": SST2Data, "squad": SquadData}


def _key_parts(loc: tuple) -> list:
    """``loc`` without the tag pydantic puts after ``data`` for the dataset variant (a reader never wrote it)."""
    return [p for i, p in enumerate(loc) if not (i and loc[i - 1] == "data" and p in _DATA_VARIANTS)]


def _expected_keys(loc: tuple, root: type[BaseModel]) -> list[str]:
    """The keys allowed where ``loc`` points, for an unknown-key message."""
    node: Any = root
    for i, part in enumerate(loc[:-1]):
        if i and loc[i - 1] == "data" and part in _DATA_VARIANTS:
            node = _DATA_VARIANTS[part]
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
            members = [a for a in getattr(node, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(members) == 1:  # Optional[Model], list[Model]
                node = members[0]
        elif isinstance(part, int):  # an item of a list of sections
            continue
        else:
            return []
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def describe_error(error: dict, root: type[BaseModel]) -> str:
    """One line for a pydantic error: the key, the value, what was expected."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    parts = _key_parts(loc)
    key = ".".join(str(p) for p in parts) or "config"
    if kind == "extra_forbidden":
        allowed = _expected_keys(loc, root)
        return f"unknown key {key!r}" + (f"; expected one of {', '.join(allowed)}" if allowed else "")
    if kind == "invalid_key" or (parts and parts[-1] == "[key]"):  # a key of a section, or of a free-form mapping
        if parts[-1] == "[key]":
            parts, loc = parts[:-1], loc[:-1]
        where = ".".join(str(p) for p in parts[:-1])
        allowed = _expected_keys(loc, root) if kind == "invalid_key" else []
        return (f"key {shown(value)}{' in ' + where if where else ''} is not a name; expected a string key"
                + (f", one of {', '.join(allowed)}" if allowed else ""))
    if kind == "missing":
        return f"{key} is missing; it is required"
    if kind.startswith("union_tag"):
        name = value.get("name") if isinstance(value, dict) else value
        return f"{key}.name = {shown(name)}: expected one of {', '.join(_DATA_VARIANTS)}"
    if kind == "kdlens_key":
        context = error.get("ctx", {})
        inner = context.get("inner")
        full = ".".join(str(p) for p in [*parts, inner] if p != "") or "config"
        shown_value = context.get("value")
        return f"{full}{'' if shown_value is None else ' = ' + shown_value}: {context.get('expected')}"
    message = one_line(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message.replace("Input should be", "expected")
    if kind == "value_error" and (message.startswith(key) or not loc):  # a cross-field check names its own key
        return message
    return f"{key} = {shown(value)}: {message}"


def validate(schema: type[Schema], raw: Any, source: str = "config") -> Schema:
    """Validate a mapping into ``schema`` or raise a one-line :class:`ConfigError`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(one_line(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}"))
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(one_line(f"{source}: {describe_error(errors[0], schema)}{more}")) from None
    except RecursionError:
        raise ConfigError(one_line(f"{source}: nested too deeply (a value that contains itself?)")) from None


def parse_config(raw: Any, source: str = "config") -> ExperimentConfig:
    """Validate a mapping into an :class:`ExperimentConfig` or raise :class:`ConfigError`."""
    return validate(ExperimentConfig, raw, source)


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
