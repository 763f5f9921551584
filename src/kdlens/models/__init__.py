"""The model zoo: AlexNet, VGG-11/16/19 and ResNet-18/34 as ``NamedLayerModel``s.

Every model has the paper's four named layers ``conv, fc1, fc2, fc3`` (see
``kdlens.models.base``) and runs both on 32x32 and 224x224 inputs: below
``image_size`` 96 the families switch to small-input (CIFAR-style) variants.
"""

from __future__ import annotations

from kdlens.models import alexnet, resnet, vgg  # noqa: F401  (registers the families)
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
    "pre_activation_norm",
    "stage_end_modules",
]

MIN_IMAGE_SIZE = 16


def build_model(
    arch: str,
    num_classes: int,
    image_size: int,
    width: float = 1.0,
    dropout: float = 0.5,
    in_channels: int = 3,
    **options,
) -> NamedLayerModel:
    """Build a registered model; ``options`` go to the family (e.g. VGG's ``batch_norm``)."""
    if arch not in MODELS:
        raise UsageError(f"unknown model {arch!r}; expected one of {', '.join(MODELS.names())}")
    if not width > 0:
        raise UsageError(f"model width must be > 0, got {width}")
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
