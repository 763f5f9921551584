"""AlexNet: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks" (2012), in the single-tower form of
torchvision's ``alexnet`` (64-192-384-256-256 channels, no LRN).

Stages: ``conv`` is the five convs up to the ReLU of the fifth (the last
max-pool is left out); ``fc1`` = that max-pool + adaptive average pool +
Linear + ReLU; ``fc2`` = Dropout + Linear + ReLU; ``fc3`` = Dropout + Linear.
Full-size hidden width is 4096.

Input size: at ``image_size >= 96`` the ImageNet definition (11x11 stride-4
first conv, 5x5 second, 3x3 max-pools with stride 2; a 224x224 image reaches
fc1 as 256x13x13, max-pooled to 6x6). Below 96 a CIFAR-style variant: all convs
3x3 stride 1, 2x2 max-pools (a 32x32 image reaches fc1 as 256x8x8, max-pooled
to 4x4), so nothing pools to zero size down to 16x16. The adaptive pool's side
is 6 scaled by ``image_size / 224``, clamped to [1, 6] (``catalog.pool_size``):
6 at 224, 1 at 32.
"""

from __future__ import annotations

from torch import nn

from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import (
    MODELS,
    SMALL_INPUT_BELOW,
    assemble,
    pool_size,
    reject_options,
    relu,
    scaled,
)


@MODELS.register("alexnet")
def alexnet(
    num_classes: int,
    image_size: int,
    width: float = 1.0,
    dropout: float = 0.5,
    in_channels: int = 3,
    **kwargs,
) -> NamedLayerModel:
    reject_options("alexnet", kwargs)
    c1, c2, c3, c4, c5 = (scaled(c, width) for c in (64, 192, 384, 256, 256))
    if image_size < SMALL_INPUT_BELOW:
        conv1 = nn.Conv2d(in_channels, c1, 3, stride=1, padding=1)
        conv2 = nn.Conv2d(c1, c2, 3, padding=1)

        def pool() -> nn.Module:
            return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)

    else:
        conv1 = nn.Conv2d(in_channels, c1, 11, stride=4, padding=2)
        conv2 = nn.Conv2d(c1, c2, 5, padding=2)

        def pool() -> nn.Module:
            return nn.MaxPool2d(kernel_size=3, stride=2)
    conv = nn.Sequential(
        conv1, relu(), pool(),  # 0-2
        conv2, relu(), pool(),  # 3-5
        nn.Conv2d(c2, c3, 3, padding=1), relu(),  # 6-7
        nn.Conv2d(c3, c4, 3, padding=1), relu(),  # 8-9
        nn.Conv2d(c4, c5, 3, padding=1), relu(),  # 10-11
    )  # fmt: skip
    return assemble(
        conv,
        top_channels=c5,
        pre_pool=[pool()],
        pool=pool_size(6, image_size),
        hidden=scaled(4096, width),
        num_classes=num_classes,
        dropout=dropout,
        stage_ends=["stages.conv.1", "stages.conv.4", "stages.conv.11"],
    )
