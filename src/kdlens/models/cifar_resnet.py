"""The CIFAR ResNets of the RepDistiller benchmark: ``resnet20``, ``resnet32``,
``resnet56``, ``resnet110`` (16-16-32-64 channels) and ``resnet8x4``,
``resnet32x4`` (32-64-128-256).

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
Sec. 4.2 (the CIFAR-10 networks of depth 6n+2), as re-implemented in
RepDistiller (Tian, Krishnan, Isola, "Contrastive Representation
Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller,
``models/resnet.py``), which is what the distillation papers' CIFAR-100 tables
train. A 3x3 conv + BN + ReLU stem of c0 channels, then three groups of n
BasicBlocks at c1, c2, c3 channels (strides 1, 2, 2), then global average
pooling and one Linear. A block computes

    y = ReLU( BN(W2 * ReLU(BN(W1 * x))) + s(x) ),

with s the identity, or a 1x1 conv (stride 2) + BN where the shape changes:
RepDistiller's projection shortcut (the paper's CIFAR nets use option A, a
zero-padded identity; we follow RepDistiller, whose parameter counts the
benchmark reports).

Stages: ``conv`` = stem + layer1..layer3; every group's last block returns its
pre-ReLU sum and the group's ReLU follows as a module (the same function as
RepDistiller's ``F.relu`` after the block), so ``"conv.pre"`` is RepDistiller's
``preact`` feature of layer3. ``fc1`` = global average pool + flatten (their
``feat[-1]``, no parameters); ``fc3`` = the Linear classifier. There is no
``fc2``. ``stage1..stage3`` are the ends of layer1..layer3 after their ReLU
(RepDistiller's ``feat[1..3]``).

``width`` multiplies every channel count (``catalog.scaled``). ``dropout`` is
accepted and unused: the network has no dropout. ``image_size`` is accepted;
the nets are for 32x32 (a 8x8 top map) and run on any size >= 16 as the
average pool is adaptive (RepDistiller's is a fixed 8x8 ``AvgPool2d``, the same
at 32x32). Initialisation as RepDistiller: Kaiming-normal (fan-out) convs, BN
weight 1 and bias 0, the Linear left at PyTorch's default.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import MODELS, assemble_cifar, reject_options, relu, scaled

# arch -> (depth, channels of stem and groups 1..3), RepDistiller's models/resnet.py
ARCHS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv + BN with a shortcut; ``activate=False`` returns the
    pre-ReLU sum (the group's ReLU module then follows)."""

    def __init__(self, cin: int, cout: int, stride: int, activate: bool) -> None:
        super().__init__()
        self.activate = activate
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = relu()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.downsample is None else self.downsample(x))
        return torch.relu(out) if self.activate else out


def _group(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        (str(j), CifarBasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, activate=j < blocks - 1))
        for j in range(blocks)
    )
    layers["relu"] = relu()
    return nn.Sequential(layers)


def cifar_resnet(
    depth: int, channels: tuple[int, int, int, int], num_classes: int, width: float, in_channels: int
) -> NamedLayerModel:
    assert (depth - 2) % 6 == 0, depth
    n = (depth - 2) // 6
    c0, *groups = (scaled(c, width) for c in channels)
    trunk: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(in_channels, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0), relu())
    )
    cin = c0
    for i, (cout, stride) in enumerate(zip(groups, (1, 2, 2)), start=1):
        trunk[f"layer{i}"] = _group(cin, cout, n, stride)
        cin = cout
    stage_ends = [f"stages.conv.layer{i}.relu" for i in range(1, 4)]
    return assemble_cifar(nn.Sequential(trunk), cin, num_classes, stage_ends, linear_init="default")


def _register(arch: str):
    depth, channels = ARCHS[arch]

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
        return cifar_resnet(depth, channels, num_classes, width, in_channels)

    factory.__name__ = factory.__qualname__ = arch
    return factory


resnet20, resnet32, resnet56, resnet110, resnet8x4, resnet32x4 = (_register(arch) for arch in ARCHS)
