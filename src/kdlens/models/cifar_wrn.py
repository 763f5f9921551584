"""Wide residual networks of the RepDistiller benchmark: ``wrn_16_2``,
``wrn_40_2``, ``wrn_16_4``, ``wrn_40_4`` (WRN-depth-k).

Zagoruyko, Komodakis, "Wide Residual Networks", BMVC 2016, as re-implemented
in RepDistiller (Tian, Krishnan, Isola, "Contrastive Representation
Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller, ``models/wrn.py``).
A 3x3 conv of 16 channels, then three groups of n = (depth - 4) / 6
pre-activation blocks at 16k, 32k, 64k channels (strides 1, 2, 2), then BN +
ReLU, global average pooling and one Linear. A block computes

    a = ReLU(BN1(x)),   y = s + W2 * Dropout(ReLU(BN2(W1 * a))),

with s = x where the block keeps its shape and s = W_s * a (a 1x1 conv, no BN)
where it does not. RepDistiller registers only k = 1, 2; ``wrn_16_4`` and
``wrn_40_4`` are its ``WideResNet(depth, widen_factor=4)``.

Stages: ``conv`` = stem + block1..block3 + the final BN + ReLU (a module, so
``"conv.pre"`` is the BN output, RepDistiller's ``preact`` ``feat[3]``);
``fc1`` = global average pool + flatten (their ``feat[-1]``, no parameters);
``fc3`` = the Linear classifier. There is no ``fc2``. A pre-activation network
has no ReLU at the end of a group; the post-ReLU end of group i is the
``ReLU(BN1(.))`` that opens the first block of group i + 1 (for the last group,
the final ReLU), i.e. the ReLU after each of RepDistiller's
``get_bn_before_relu()``: those are ``stage1..stage3``.

``width`` multiplies every channel count (``catalog.scaled``). ``dropout`` is
accepted and unused: the benchmark's WRNs have none (RepDistiller's
``dropRate`` 0; kdlens's default ``dropout`` 0.5 must not change them). The
option ``drop_rate`` (default 0.0, RepDistiller's) sets the dropout between a
block's convs (the paper's 0.3 for some runs). ``image_size`` is accepted; the
nets are for 32x32 and run on any size >= 16 as the average pool is adaptive.
Initialisation as RepDistiller: convs N(0, 2 / (k*k*out)) (Kaiming-normal,
fan-out), BN weight 1 and bias 0, the Linear's weight at PyTorch's default and
its bias 0.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from kdlens.errors import UsageError
from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import MODELS, assemble_cifar, reject_options, relu, scaled

# arch -> (depth, widen factor k)
ARCHS: dict[str, tuple[int, int]] = {
    "wrn_16_2": (16, 2),
    "wrn_40_2": (40, 2),
    "wrn_16_4": (16, 4),
    "wrn_40_4": (40, 4),
}


class WideBlock(nn.Module):
    """A pre-activation basic block (BN-ReLU-conv, twice) with a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = relu()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = relu()
        self.dropout = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        # RepDistiller tests cin == cout only; with the published widths the
        # shape changes exactly where the stride is 2, and a tiny ``width``
        # (channel floor) must not pair a stride with an identity.
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if cin != cout or stride != 1 else None

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(a)))))
        return out + (x if self.shortcut is None else self.shortcut(a))


def cifar_wrn(depth: int, k: int, num_classes: int, width: float, in_channels: int, drop_rate: float) -> NamedLayerModel:
    assert (depth - 4) % 6 == 0, depth
    n = (depth - 4) // 6
    c0, *groups = (scaled(c, width) for c in (16, 16 * k, 32 * k, 64 * k))
    trunk: OrderedDict[str, nn.Module] = OrderedDict(conv1=nn.Conv2d(in_channels, c0, 3, padding=1, bias=False))
    cin = c0
    for i, (cout, stride) in enumerate(zip(groups, (1, 2, 2)), start=1):
        trunk[f"block{i}"] = nn.Sequential(
            *(WideBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, drop_rate) for j in range(n))
        )
        cin = cout
    trunk["bn"] = nn.BatchNorm2d(cin)
    trunk["relu"] = relu()
    stage_ends = ["stages.conv.block2.0.relu1", "stages.conv.block3.0.relu1", "stages.conv.relu"]
    return assemble_cifar(nn.Sequential(trunk), cin, num_classes, stage_ends, linear_init="zero_bias")


def _register(arch: str):
    depth, k = ARCHS[arch]

    @MODELS.register(arch)
    def factory(
        num_classes: int,
        image_size: int,
        width: float = 1.0,
        dropout: float = 0.5,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        **kwargs,
    ) -> NamedLayerModel:
        reject_options(arch, kwargs)
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
            raise UsageError(f"{arch} drop_rate = {drop_rate!r}: expected a number in [0, 1)")
        return cifar_wrn(depth, k, num_classes, width, in_channels, float(drop_rate))

    factory.__name__ = factory.__qualname__ = arch
    return factory


wrn_16_2, wrn_40_2, wrn_16_4, wrn_40_4 = (_register(arch) for arch in ARCHS)
