"""The MobileNetV2 of the RepDistiller benchmark: ``mobilenetv2``, its
``mobile_half`` (width multiplier 0.5, expansion 6).

Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018, in the CIFAR form of Jin et al., "Knowledge
Distillation via Route Constrained Optimization" (ICCV 2019) that RepDistiller
(Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020;
github.com/HobbitLong/RepDistiller, ``models/mobilenetv2.py``) trains. An
inverted residual block with expansion t maps x (c_in channels) to

    h = ReLU(BN(W_pw * x)),  h = ReLU(BN(W_dw * h)),  y = BN(W_lin * h) (+ x),

W_pw a 1x1 conv to t*c_in channels, W_dw a 3x3 depthwise conv (the block's
stride), W_lin a 1x1 conv to c_out; the identity is added where stride 1 and
c_in = c_out. The network: a 3x3 stride-2 conv + BN + ReLU stem of 16
channels; seven groups (t, c, n, s) = (1, 8, 1, 1), (6, 12, 2, 1),
(6, 16, 3, 2), (6, 32, 4, 2), (6, 48, 3, 1), (6, 80, 3, 2), (6, 160, 1, 1)
(the paper's channels times 0.5, truncated as RepDistiller's ``int``); a 1x1
conv + BN + ReLU to 1280 channels (kept at 1280 for multipliers <= 1, as the
paper); global average pooling; one Linear. On 32x32 the top map is 2x2.

Deviations from the paper, all RepDistiller's: ReLU, not ReLU6; the t = 1 block
keeps its 1x1 expansion conv; CIFAR strides (stem stride 2, then 1, 1, 2, 2, 1,
2, 1: the paper's first group of 24 does not downsample); no dropout.

Stages: ``conv`` = stem + groups 0..6 + the 1x1 head conv, ending in its ReLU
(a module, so ``"conv.pre"`` is the head's BN output); ``fc1`` = global
average pool + flatten (RepDistiller's ``feat[-1]``, no parameters); ``fc3`` =
the Linear classifier. There is no ``fc2``. ``stage1..stage4`` are the outputs
of groups 1, 2, 4 and 6 (RepDistiller's ``feat[1..4]``); they are linear
bottleneck outputs, not post-ReLU: the architecture has no ReLU there.

``width`` multiplies every channel count on top of the 0.5 multiplier
(``catalog.scaled``; 1.0 = the published network). ``dropout`` is accepted and
unused. ``image_size`` is accepted; any size >= 16 works (the pool is
adaptive; RepDistiller asks for a multiple of 32). Initialisation as
RepDistiller: convs N(0, 2 / (k*k*out)) (Kaiming-normal, fan-out), BN weight 1
and bias 0, the Linear N(0, 0.01) with bias 0.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import MODELS, assemble_cifar, reject_options, relu, scaled

EXPANSION = 6  # RepDistiller's T for mobile_half
WIDTH_MULT = 0.5  # mobile_half
# (expansion, channels at multiplier 1, blocks, stride of the first block), RepDistiller's CIFAR strides
SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (EXPANSION, 24, 2, 1),
    (EXPANSION, 32, 3, 2),
    (EXPANSION, 64, 4, 2),
    (EXPANSION, 96, 3, 1),
    (EXPANSION, 160, 3, 2),
    (EXPANSION, 320, 1, 1),
)
STEM, LAST = 32, 1280
STAGE_GROUPS = (1, 2, 4, 6)  # the groups whose outputs are RepDistiller's feat[1..4]


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), relu()
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            relu(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            relu(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def cifar_mobilenetv2(num_classes: int, width: float, in_channels: int) -> NamedLayerModel:
    cin = scaled(int(STEM * WIDTH_MULT), width)
    trunk: OrderedDict[str, nn.Module] = OrderedDict(stem=_conv_bn_relu(in_channels, cin, 3, stride=2))
    for i, (t, c, n, s) in enumerate(SETTING):
        cout = scaled(int(c * WIDTH_MULT), width)
        trunk[f"block{i}"] = nn.Sequential(
            *(InvertedResidual(cin if j == 0 else cout, cout, s if j == 0 else 1, t) for j in range(n))
        )
        cin = cout
    last = scaled(LAST, width)  # RepDistiller: int(1280 * mult) only for mult > 1
    trunk["head"] = _conv_bn_relu(cin, last, 1, stride=1)
    stage_ends = [f"stages.conv.block{i}" for i in STAGE_GROUPS]
    return assemble_cifar(nn.Sequential(trunk), last, num_classes, stage_ends, linear_init="normal")


@MODELS.register("mobilenetv2")
def mobilenetv2(
    num_classes: int,
    image_size: int,
    width: float = 1.0,
    dropout: float = 0.5,
    in_channels: int = 3,
    **kwargs,
) -> NamedLayerModel:
    reject_options("mobilenetv2", kwargs)
    return cifar_mobilenetv2(num_classes, width, in_channels)
