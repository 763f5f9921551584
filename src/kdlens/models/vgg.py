"""VGG-11/16/19: Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition" (2015), configurations A, D and E, laid out as
in torchvision's ``vgg*_bn``.

Stages: ``conv`` is every conv block up to the ReLU of the top conv (the fifth
max-pool is left out); ``fc1`` = that max-pool + adaptive average pool +
Linear + ReLU; ``fc2`` = Dropout + Linear + ReLU; ``fc3`` = Dropout + Linear.
Full-size hidden width is 4096.

Input size: the definition is the same at every size (``SMALL_INPUT_BELOW``
does not apply). The adaptive pool's side is 7 scaled by ``image_size / 224``,
clamped to [1, 7] (``catalog.pool_size``): 7x7 at 224 as in torchvision (a
224x224 image reaches fc1 as 512x14x14, max-pooled to 7x7), 1x1 at 32 (512x2x2,
max-pooled to 1x1). Max-pools use ``ceil_mode`` so odd or tiny sizes (down to
16x16) never pool to nothing; for 32 and 224 this changes nothing.

``batch_norm`` (default True) puts BatchNorm after every conv, as in
``vgg*_bn``: plain VGG trained from scratch on small data often fails to start
learning without it.
"""

from __future__ import annotations

from torch import nn

from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import (
    MODELS,
    assemble,
    pool_size,
    reject_options,
    relu,
    scaled,
)

M = "M"  # a 2x2 max-pool
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg16": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
    "vgg19": [64, 64, M, 128, 128, M, 256, 256, 256, 256, M,
              512, 512, 512, 512, M, 512, 512, 512, 512, M],
}  # fmt: skip


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)


def _vgg(
    arch: str,
    num_classes: int,
    image_size: int,
    width: float,
    dropout: float,
    in_channels: int,
    batch_norm: bool,
) -> NamedLayerModel:
    config = CONFIGS[arch]
    assert config[-1] == M
    layers: list[nn.Module] = []
    stage_ends: list[str] = []
    channels = in_channels
    for item in config[:-1]:  # the last max-pool belongs to fc1
        if item == M:
            stage_ends.append(f"stages.conv.{len(layers) - 1}")
            layers.append(_pool())
            continue
        out = scaled(int(item), width)
        layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(relu())
        channels = out
    stage_ends.append(f"stages.conv.{len(layers) - 1}")
    return assemble(
        nn.Sequential(*layers),
        top_channels=channels,
        pre_pool=[_pool()],
        pool=pool_size(7, image_size),
        hidden=scaled(4096, width),
        num_classes=num_classes,
        dropout=dropout,
        stage_ends=stage_ends,
    )


def _register(arch: str):
    @MODELS.register(arch)
    def factory(
        num_classes: int,
        image_size: int,
        width: float = 1.0,
        dropout: float = 0.5,
        in_channels: int = 3,
        batch_norm: bool = True,
        **kwargs,
    ) -> NamedLayerModel:
        reject_options(arch, kwargs)
        return _vgg(arch, num_classes, image_size, width, dropout, in_channels, batch_norm)

    factory.__name__ = factory.__qualname__ = arch
    return factory


vgg11, vgg16, vgg19 = (_register(arch) for arch in CONFIGS)
