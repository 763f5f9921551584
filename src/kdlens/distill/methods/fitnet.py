"""FitNets, the hint loss of

    Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin
    Deep Nets." ICLR 2015.

The student's feature F_s at the method's layer (the "guided" layer) is
mapped by a regressor r to the teacher's channel count and pulled towards the
teacher's feature F_t (the "hint"):

    L = beta * mean_{b, c, h, w} ( r(F_s) - F_t )^2

r is a 1x1 convolution with bias, trained with the student (a (B, C) feature
is taken as a (B, C, 1, 1) map, so r is then a linear layer). The paper
writes 1/2 ||u_h - r(v_g)||^2; we use RepDistiller's form (Tian,
Krishnan, Isola, ICLR 2020, github.com/HobbitLong/RepDistiller: ``HintLoss``
= ``nn.MSELoss``, the squared difference *averaged* over batch and feature)
with its weight beta = 100 (``-b 100`` in its ``run_cifar_distill.sh``).

Deviations, both deliberate:

- One stage. The paper trains the student up to the guided layer on the hint
  loss alone, then the whole student with KD; here the student trains jointly
  on CE + beta * L from the start, as RepDistiller's FitNet runs do.
- The regressor. RepDistiller's ``ConvReg`` is conv + batch norm + ReLU
  (a strided or transposed conv where the spatial sizes differ by 2); ours is
  a plain 1x1 conv, a linear regressor that suits any layer (post-ReLU maps,
  pre-activations, logits), and maps of different spatial size are pooled to
  the smaller one (``match_spatial``) instead. Channel counts may differ
  freely. The teacher's feature is detached.
"""

from __future__ import annotations

from typing import Mapping, Optional

from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod, as_map, connected_maps
from kdlens.errors import UsageError


@METHODS.register("fitnet")
class FitNet(DistillationMethod):
    def __init__(self, layer: str = "conv", beta: float = 100.0) -> None:
        super().__init__()
        if not beta >= 0:
            raise UsageError(f"beta = {beta!r}: expected >= 0")
        self.layers = (layer,)
        self.beta = float(beta)
        self.regressor: Optional[nn.Conv2d] = None

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        (layer,) = self.layers
        c_s, c_t = as_map(student[layer]).shape[1], as_map(teacher[layer]).shape[1]
        self.regressor = nn.Conv2d(c_s, c_t, kernel_size=1)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        s, t = connected_maps("fitnet", self, self.regressor, student, teacher)
        return self.beta * (s - t).pow(2).mean()
