"""Variational information distillation (VID), the loss of

    Ahn, Hu, Damianou, Lawrence, Dai. "Variational Information Distillation
    for Knowledge Transfer." CVPR 2019.

VID maximises a variational lower bound on the mutual information between
the teacher's feature t and the student's feature s: the teacher's feature is
modelled as a Gaussian given the student's, q(t | s) = N(t; mu(s), sigma²),
with a mean mu(s) regressed from the student's feature and a variance
per teacher channel c, the same for every input and position (the paper's
choice for intermediate layers):

    sigma_c² = softplus(alpha_c) + eps
    L = lambda * mean_{b, c, h, w} [ log(sigma_c²) / 2 + (t_{bchw} - mu(s)_{bchw})² / (2 sigma_c²) ]

(the negative log-likelihood of t under q, without its constant log(2 pi)/2).
Both mu and alpha train with the student. Following the authors' code (via
RepDistiller, Tian, Krishnan, Isola, ICLR 2020,
github.com/HobbitLong/RepDistiller, ``VIDLoss``):

- mu is three 1x1 convolutions without bias, with ReLUs between them:
  C_s -> C_mid -> C_mid -> C_t, C_mid = C_t by default (``mid_channels``);
- alpha starts where sigma² = ``init_pred_var`` = 5.0, eps = 1e-5;
- the loss is averaged over batch, channels and positions, lambda = 1
  (``-b 1`` in RepDistiller's ``run_cifar_distill.sh``).

The paper sums the bound over several layer pairs; here it is one layer, the
method's. A (B, C) feature is taken as a (B, C, 1, 1) map; maps of different
spatial size are pooled to the smaller one, as RepDistiller does. The teacher
is detached.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod, as_map, match_spatial
from kdlens.errors import UsageError


def inverse_softplus(value: float) -> float:
    """alpha with softplus(alpha) = value (> 0)."""
    return value + math.log(-math.expm1(-value))


@METHODS.register("vid")
class VariationalInformationDistillation(DistillationMethod):
    def __init__(
        self, layer: str = "conv", lam: float = 1.0, init_pred_var: float = 5.0, eps: float = 1e-5,
        mid_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not lam >= 0:
            raise UsageError(f"lam = {lam!r}: expected >= 0")
        if not eps > 0:
            raise UsageError(f"eps = {eps!r}: expected > 0")
        if not init_pred_var > eps:
            raise UsageError(f"init_pred_var = {init_pred_var!r}: expected > eps = {eps!r}")
        if mid_channels is not None and (
            isinstance(mid_channels, bool) or not isinstance(mid_channels, int) or mid_channels < 1
        ):
            raise UsageError(f"mid_channels = {mid_channels!r}: expected an integer >= 1 (or null: the teacher's)")
        self.layers = (layer,)
        self.lam = float(lam)
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)
        self.mid_channels = mid_channels
        self.regressor: Optional[nn.Sequential] = None
        self.alpha: Optional[nn.Parameter] = None

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        (layer,) = self.layers
        c_s, c_t = as_map(student[layer]).shape[1], as_map(teacher[layer]).shape[1]
        c_mid = self.mid_channels or c_t
        self.regressor = nn.Sequential(
            nn.Conv2d(c_s, c_mid, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_t, kernel_size=1, bias=False),
        )
        self.alpha = nn.Parameter(torch.full((c_t,), inverse_softplus(self.init_pred_var - self.eps)))

    def variance(self) -> Tensor:
        """sigma² per teacher channel, (C_t,)."""
        if self.alpha is None:
            raise RuntimeError("vid is not set up; call setup() with a batch of features first")
        return F.softplus(self.alpha) + self.eps

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        f_s, f_t = self.features(student, teacher, same_shape=False)
        if self.regressor is None:
            raise RuntimeError("vid is not set up; call setup() with a batch of features first")
        s, t = match_spatial(as_map(f_s), as_map(f_t))
        mean = self.regressor(s)
        var = self.variance().view(1, -1, 1, 1)
        nll = 0.5 * (torch.log(var) + (t - mean).pow(2) / var)
        return self.lam * nll.mean()
