"""The model registry and the few helpers every model family shares.

Kept separate from ``kdlens.models.__init__`` so the family modules can import
it without an import cycle.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from kdlens.errors import UsageError
from kdlens.models.base import NamedLayerModel
from kdlens.registry import Registry

MODELS: Registry[NamedLayerModel] = Registry("model")

# Below this input size a family switches to its small-input (CIFAR-style)
# definition; ImageNet stems would shrink a 32x32 image to nothing.
SMALL_INPUT_BELOW = 96


def pool_size(size_at_224: int, image_size: int) -> int:
    """The side of fc1's adaptive average pool: the side the top feature map has
    at 224x224 (7 for VGG, 6 for AlexNet), scaled by ``image_size / 224`` and
    clamped to [1, size_at_224], so a smaller image is not pooled *up* into
    repeated copies of a few values (1 at 32x32, 3 for VGG at 96x96)."""
    return min(size_at_224, max(1, round(size_at_224 * image_size / 224)))


def scaled(channels: int, width: float) -> int:
    """A channel count or hidden size times ``width``, floored so tiny widths still work."""
    return max(4, round(channels * width))


def reject_options(arch: str, options: dict[str, Any]) -> None:
    # A misspelt option (``batchnorm=False``) must not be silently ignored.
    if options:
        raise TypeError(f"{arch} got unexpected option(s): {', '.join(sorted(options))}")


def check_integer_option(arch: str, name: str, value: Any, minimum: int, why: str = "") -> None:
    """A one-line :class:`~kdlens.errors.UsageError` unless ``value`` is an int
    (not a bool) of at least ``minimum``; ``why`` says what it counts."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{arch} {name} = {value!r}: expected an integer >= {minimum}" + (f" ({why})" if why else ""))


def relu() -> nn.ReLU:
    # Not in-place: an in-place ReLU would overwrite outputs captured by hooks
    # on the module before it (see kdlens.models.features.capture).
    return nn.ReLU(inplace=False)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BatchNorm, N(0, 0.01) Linear; global RNG only."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def assemble(
    conv: nn.Module,
    *,
    top_channels: int,
    pre_pool: Sequence[nn.Module],
    pool: int,
    hidden: int,
    num_classes: int,
    dropout: float,
    stage_ends: list[str],
) -> NamedLayerModel:
    """Wrap a conv trunk into the paper's four stages ``conv, fc1, fc2, fc3``.

    Dropout opens fc2 and fc3 (not closes fc1 and fc2) so the fc1/fc2 outputs
    are the post-ReLU features the paper measures.
    """
    fc1 = nn.Sequential(
        *pre_pool,
        nn.AdaptiveAvgPool2d(pool),
        nn.Flatten(),
        nn.Linear(top_channels * pool * pool, hidden),
        relu(),
    )
    fc2 = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, hidden), relu())
    fc3 = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    model = NamedLayerModel([("conv", conv), ("fc1", fc1), ("fc2", fc2), ("fc3", fc3)])
    model.stage_ends = list(stage_ends)
    init_weights(model)
    return model


def assemble_cifar(trunk: nn.Module, channels: int, num_classes: int, stage_ends: list[str],
                   linear_init: str) -> NamedLayerModel:
    """RepDistiller's CIFAR head on a conv trunk (ending in its last ReLU): stages
    ``conv`` (the trunk), ``fc1`` (global average pool + flatten, the embedding)
    and ``fc3`` (one Linear). Initialised as RepDistiller's families are:
    Kaiming-normal convs (biases zero), unit BatchNorms, and the Linear by
    ``linear_init``: "default" (nn.Linear's own, the ResNets), "zero_bias" (the
    WRNs) or "normal" (N(0, 0.01) and a zero bias, VGG and MobileNetV2)."""
    if linear_init not in ("default", "zero_bias", "normal"):
        raise ValueError(f"linear_init = {linear_init!r}: expected default, zero_bias or normal")
    model = NamedLayerModel([
        ("conv", trunk),
        ("fc1", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("fc3", nn.Linear(channels, num_classes)),
    ])
    model.stage_ends = list(stage_ends)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_init != "default":
            if linear_init == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model
