"""The model zoo: AlexNet, VGG-11/16/19 and ResNet-18/34 for images, PointNet,
PointNet++ (SSG) and DGCNN for point clouds, and BERT (through Hugging Face
transformers) for text, as ``NamedLayerModel``s; and the CIFAR networks of the
RepDistiller benchmark (``resnet20`` .. ``resnet110``, ``resnet8x4``,
``resnet32x4``, ``wrn_*``, ``vgg8``, ``vgg13``, ``mobilenetv2``).

Every model has the paper's four named layers ``conv, fc1, fc2, fc3`` (see
``kdlens.models.base``), except the RepDistiller networks, which have one
Linear head: ``conv``, ``fc1`` (the pooled embedding) and ``fc3``. The image
models run both on 32x32 and 224x224 inputs: below ``image_size`` 96 the
families switch to small-input (CIFAR-style) variants. The point-cloud models take ``(B, N, 3)`` batches of
points and no ``image_size``; a family says which input it takes by an
``input_kind`` attribute on its factory (``"image"`` when absent).
"""

from __future__ import annotations

from typing import Optional

from kdlens.models import alexnet, bert, dgcnn, pointnet, pointnet2, resnet, vgg  # noqa: F401  (registers the families)
from kdlens.models import cifar_mobilenet, cifar_resnet, cifar_vgg, cifar_wrn  # noqa: F401  (RepDistiller's CIFAR nets)
from kdlens.models.base import PAPER_LAYERS, PRE_ACTIVATION, NamedLayerModel, pre_activation_norm
from kdlens.models.catalog import MODELS
from kdlens.models.features import capture, stage_end_modules
from kdlens.errors import UsageError

__all__ = [
    "MODELS",
    "PAPER_LAYERS",
    "PRE_ACTIVATION",
    "NamedLayerModel",
    "build_model",
    "capture",
    "input_kind",
    "pre_activation_norm",
    "stage_end_modules",
]

MIN_IMAGE_SIZE = 16
IMAGE, POINTS, TEXT = "image", pointnet.POINTS, bert.TEXT


def input_kind(arch: str) -> str:
    """What a registered model takes: ``"image"`` (``(B, C, H, W)``),
    ``"points"`` (``(B, N, C)`` point clouds) or ``"text"`` (``(B, 2, T)`` token ids and word indices,
    ``(B, 3, T)`` with segments)."""
    return getattr(MODELS.get(arch), "input_kind", IMAGE)


def _known_models() -> str:
    """The registered names, grouped by the input they take."""
    groups = {IMAGE: "images", POINTS: "point clouds", TEXT: "text"}
    parts = []
    for kind, label in groups.items():
        names = [name for name in MODELS.names() if input_kind(name) == kind]
        if names:
            parts.append(f"{', '.join(names)} ({label})")
    return " or ".join(parts)


def build_model(
    arch: str,
    num_classes: int,
    image_size: Optional[int] = None,
    width: float = 1.0,
    dropout: float = 0.5,
    in_channels: int = 3,
    **options,
) -> NamedLayerModel:
    """Build a registered model; ``options`` go to the family (e.g. VGG's ``batch_norm``).

    ``image_size`` sizes an image model and is ignored by a point-cloud model
    (``None`` is allowed there), so one config can name either kind."""
    if arch not in MODELS:
        raise UsageError(f"unknown model {arch!r}; expected one of {_known_models()}")
    if not width > 0:
        raise UsageError(f"model width must be > 0, got {width}")
    if input_kind(arch) == IMAGE:
        if image_size is None:
            raise UsageError(f"model {arch!r} takes images: image_size is required")
        if image_size < MIN_IMAGE_SIZE:
            raise UsageError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if num_classes < 2:
        raise UsageError(f"num_classes must be >= 2, got {num_classes}")
    return MODELS.build(
        arch,
        num_classes=num_classes,
        image_size=image_size,
        width=width,
        dropout=dropout,
        in_channels=in_channels,
        **options,
    )
