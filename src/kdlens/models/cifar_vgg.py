"""The CIFAR VGGs of the RepDistiller benchmark: ``vgg8`` and ``vgg13``, with
batch norm.

Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (``vgg13`` is configuration B), as re-implemented for
CIFAR in RepDistiller (Tian, Krishnan, Isola, "Contrastive Representation
Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller, ``models/vgg.py``,
``vgg8_bn`` and ``vgg13_bn``; ``vgg8`` is its configuration "S", one conv per
block, not in the paper). Five blocks of 3x3 conv (with bias) + BN + ReLU at
64, 128, 256, 512, 512 channels (one conv each for vgg8, two for vgg13), a 2x2
max-pool after blocks 0, 1, 2, global average pooling and one Linear; the
fully connected layers of the paper are removed:

    f_i = ReLU(BN(W * f_{i-1} + b)),   logits = W_fc * mean_{h,w} f_top + b_fc.

Stages: ``conv`` = the five blocks and their pools, ending in block 4's ReLU
(a module, so ``"conv.pre"`` is its BN output, RepDistiller's ``f4_pre``);
``fc1`` = global average pool + flatten (their ``feat[-1]``, no parameters);
``fc3`` = the Linear classifier. There is no ``fc2``. ``stage1..stage4`` are
the ends of blocks 1..4 after their ReLU (RepDistiller's ``feat[1..4]``, the
points of its ``get_bn_before_relu``; block 0 plays the stem, ``feat[0]``).

Input size: RepDistiller max-pools after block 3 only for 64x64 inputs (block
4 then runs at 4x4 as at 32x32); we do so for every ``image_size >= 64``, so
larger inputs are not left a 4x larger top map (a deviation only above 64).
Any size >= 16 works (the last pool is adaptive).

``width`` multiplies every channel count (``catalog.scaled``). ``dropout`` is
accepted and unused: the network has no dropout. Initialisation as
RepDistiller: convs N(0, 2 / (k*k*out)) (Kaiming-normal, fan-out) with bias
0, BN weight 1 and bias 0, the Linear N(0, 0.01) with bias 0.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import MODELS, assemble_cifar, reject_options, relu, scaled

# convs per block (each block one channel count: 64, 128, 256, 512, 512)
ARCHS: dict[str, int] = {"vgg8": 1, "vgg13": 2}
CHANNELS = (64, 128, 256, 512, 512)
POOL3_FROM = 64  # image sizes that get the max-pool after block 3


def _block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for j in range(convs):
        layers += [nn.Conv2d(cin if j == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout), relu()]
    return nn.Sequential(*layers)


def cifar_vgg(convs: int, num_classes: int, image_size: int, width: float, in_channels: int) -> NamedLayerModel:
    trunk: OrderedDict[str, nn.Module] = OrderedDict()
    cin = in_channels
    for i, base in enumerate(CHANNELS):
        cout = scaled(base, width)
        trunk[f"block{i}"] = _block(cin, cout, convs)
        if i < 3 or (i == 3 and image_size >= POOL3_FROM):
            trunk[f"pool{i}"] = nn.MaxPool2d(kernel_size=2, stride=2)
        cin = cout
    last = 3 * convs - 1  # the index of a block's final ReLU
    stage_ends = [f"stages.conv.block{i}.{last}" for i in range(1, 5)]
    return assemble_cifar(nn.Sequential(trunk), cin, num_classes, stage_ends, linear_init="normal")


def _register(arch: str):
    convs = ARCHS[arch]

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
        return cifar_vgg(convs, num_classes, image_size, width, in_channels)

    factory.__name__ = factory.__qualname__ = arch
    return factory


vgg8, vgg13 = (_register(arch) for arch in ARCHS)
