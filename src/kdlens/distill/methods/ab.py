"""Activation boundaries (AB), the alternative loss of

    Heo, Lee, Yun, Choi. "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons." AAAI 2019.

The student learns where the teacher's neurons switch on and off, not their
values. Both networks are read *before* the ReLU (``"<layer>.pre"``); the
student's pre-activation goes through a connector r (1x1 conv + batch norm,
trained with the student) to the teacher's channel count. With the teacher's
pre-activation T, S = r(f_S) and a margin m, per neuron (the paper's
alternative loss, a hinge on both sides of the boundary):

    l(S, T) = (S + m)^2  where T <= 0 and S > -m      (switched off: push below -m)
            + (S - m)^2  where T >  0 and S <=  m     (switched on: push above +m)

    L = beta * mean_{b, c, h, w} l(S, T)

m = 1 (``margin``): the authors' code (github.com/bhheo/AB_distillation) and
RepDistiller's ``ABLoss`` default. Spatial sizes that differ are pooled to the
smaller (``match_spatial``, after the connector); channel counts may differ
freely. The teacher is detached.

The weight. The paper uses the loss only to initialise the student (the
layers below the distilled one, before ordinary CE training), and so does
RepDistiller (``--init_epochs 30``; its main stage has ``loss_kd = 0``, so
its ``-b 1`` multiplies nothing). Here the student trains in one stage, CE +
beta * L jointly, as RepDistiller's "-b" joint runs do. The paper's L is a
sum over the neurons (RepDistiller: the sum over a layer's neurons / B
* 3/1000, per layer weighted 2^(i-n+1)), whose size grows with the layer's
C*H*W: on resnet8x4's last map (256 x 8 x 8) that term alone starts near
1.92 * 16384 * 3/1000 = 94, against a CE of ln 100 = 4.6. We average over the neurons instead, which makes the
start independent of the layer: the connector's batch norm standardises the
student's pre-activations, so each neuron starts at about
E[(z + 1)^2; z > -1] = 2 Phi(1) + phi(1) = 1.92 for z ~ N(0, 1) (the same
for T > 0 by symmetry) whatever the teacher; with beta = 1 (RepDistiller's
``-b 1``) the loss starts near 1.9, on the scale of CE (ln K: 1.1 for 3
classes, 2.3 for 10, 4.6 for 100). In RepDistiller's terms our beta = 1 is
its per-layer sum times 1000 / (3 C H W).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod, as_map, connected_maps
from kdlens.errors import UsageError
from kdlens.models.base import PRE_ACTIVATION


def alternative_loss(student: Tensor, teacher: Tensor, margin: float = 1.0) -> Tensor:
    """AB's per-neuron hinge: (S + m)^2 where T <= 0 < S + m, (S - m)^2 where
    T > 0 and S <= m, else 0 (same shape as the inputs)."""
    off = (teacher <= 0) & (student > -margin)
    on = (teacher > 0) & (student <= margin)
    return (student + margin).pow(2) * off.to(student.dtype) + (student - margin).pow(2) * on.to(student.dtype)


@METHODS.register("ab")
class ActivationBoundaries(DistillationMethod):
    def __init__(self, layer: str = "conv", beta: float = 1.0, margin: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise UsageError(f"beta = {beta!r}: expected a finite number >= 0")
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
            raise UsageError(f"margin = {margin!r}: expected a finite number > 0")
        if layer.endswith(PRE_ACTIVATION):
            raise UsageError(f"layer = {layer!r}: expected the layer's name; ab reads its pre-activation itself")
        self.layer = layer
        self.layers = (layer + PRE_ACTIVATION,)
        self.beta = float(beta)
        self.margin = float(margin)
        self.connector: Optional[nn.Sequential] = None

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        (key,) = self.layers
        c_s, c_t = as_map(student[key]).shape[1], as_map(teacher[key]).shape[1]
        conv = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # the authors' init
        self.connector = nn.Sequential(conv, nn.BatchNorm2d(c_t))

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        s, t = connected_maps("ab", self, self.connector, student, teacher)
        return self.beta * alternative_loss(s, t, self.margin).mean()

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, beta={self.beta}, margin={self.margin}"

