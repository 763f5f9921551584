"""ResNet-18/34: He et al., "Deep Residual Learning for Image Recognition"
(2016), BasicBlock variants laid out as in torchvision, with the extra head of
"Explaining Knowledge Distillation by Quantifying the Knowledge" (Sec. 4.1):
ResNets have a single FC layer, so two conv layers and two FC layers are added
before the final one.

Stages: ``conv`` = stem + layer1..layer4 + two extra 3x3 conv+BN+ReLU layers
at layer4's width (the second is the top conv layer); ``fc1`` = global average
pool + Linear + ReLU; ``fc2`` = Dropout + Linear + ReLU; ``fc3`` = Dropout +
Linear. The added head's full-size hidden width is 512 (layer4's width).

Input size: at ``image_size >= 96`` the ImageNet stem (7x7 stride-2 conv +
3x3 stride-2 max-pool; a 224x224 image reaches fc1 as 512x7x7). Below 96 the
CIFAR-style stem (3x3 stride-1 conv, no max-pool; a 32x32 image reaches fc1 as
512x4x4).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import (
    MODELS,
    SMALL_INPUT_BELOW,
    assemble,
    reject_options,
    relu,
    scaled,
)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            *_conv_bn(cin, cout, 3, stride), relu(), *_conv_bn(cout, cout, 3)
        )
        self.shortcut = (
            nn.Sequential(*_conv_bn(cin, cout, 1, stride))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.relu = relu()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


def _resnet(
    blocks: tuple[int, int, int, int],
    num_classes: int,
    image_size: int,
    width: float,
    dropout: float,
    in_channels: int,
) -> NamedLayerModel:
    stem_channels = scaled(64, width)
    if image_size < SMALL_INPUT_BELOW:
        stem = nn.Sequential(*_conv_bn(in_channels, stem_channels, 3), relu())
    else:
        stem = nn.Sequential(
            *_conv_bn(in_channels, stem_channels, 7, stride=2),
            relu(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    trunk: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
    channels = stem_channels
    for i, (count, base) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        out = scaled(base, width)
        stride = 1 if i == 1 else 2
        trunk[f"layer{i}"] = nn.Sequential(
            *(BasicBlock(channels if j == 0 else out, out, stride if j == 0 else 1)
              for j in range(count))
        )  # fmt: skip
        channels = out
    trunk["extra"] = nn.Sequential(
        *_conv_bn(channels, channels, 3), relu(), *_conv_bn(channels, channels, 3), relu()
    )
    return assemble(
        nn.Sequential(trunk),
        top_channels=channels,
        pre_pool=[],
        pool=1,
        hidden=scaled(512, width),
        num_classes=num_classes,
        dropout=dropout,
        stage_ends=[f"stages.conv.layer{i}" for i in range(1, 5)],
    )


BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _register(arch: str):
    @MODELS.register(arch)
    def factory(
        num_classes: int,
        image_size: int,
        width: float = 1.0,
        dropout: float = 0.5,
        in_channels: int = 3,
        **kwargs,
    ) -> NamedLayerModel:
        reject_options(arch, kwargs)
        return _resnet(BLOCKS[arch], num_classes, image_size, width, dropout, in_channels)

    factory.__name__ = factory.__qualname__ = arch
    return factory


resnet18, resnet34 = (_register(arch) for arch in BLOCKS)
