"""Neuron selectivity transfer (NST), the loss of

    Huang, Wang. "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer." arXiv:1707.01219, 2017.

Each channel's activation over the H x W positions of a feature map is one
sample of a distribution (its "selectivity pattern"); the student's C_s
channels should be distributed like the teacher's C_t channels. Per image,
with f^s_i, f^t_j the channels flattened to H*W-vectors and L2-normalised,
the squared maximum mean discrepancy with the polynomial kernel
k(x, y) = (x . y + c)^d, d = 2, c = 0 (the paper's "poly" NST) is

    MMD² = mean_{i, i'} k(f^t_i, f^t_i') + mean_{j, j'} k(f^s_j, f^s_j')
           - 2 mean_{i, j} k(f^s_j, f^t_i)

and L = lambda * mean over the batch of MMD². The paper writes the loss as
lambda / 2 * MMD²; we use RepDistiller's form (Tian, Krishnan, Isola,
ICLR 2020, github.com/HobbitLong/RepDistiller, ``NSTLoss``), lambda * MMD²,
with its weight lambda = 50 (``-b 50`` in its ``run_cifar_distill.sh``). The
teacher-teacher term has no gradient; it is kept so that the loss is the
MMD² itself, zero when the distributions agree.

RepDistiller sums the loss over several layers; here it is the method's one
layer. Channel counts may differ freely; maps of different
spatial size are pooled to the smaller one (``match_spatial``), as
RepDistiller does. A map needs more than one position: one position's
normalised "pattern" is just a sign. The teacher is detached.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch.nn.functional as F
from torch import Tensor

from kdlens.distill.base import METHODS, DistillationMethod, pooled_maps
from kdlens.errors import UsageError


def selectivity_patterns(feature: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H*W): each channel's map flattened and L2-normalised."""
    return F.normalize(feature.flatten(2), dim=2)


def mean_poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """(B, N, D), (B, M, D) -> (B,): mean over the N x M pairs of (a_n . b_m)²."""
    return (a @ b.transpose(1, 2)).pow(2).mean(dim=(1, 2))


@METHODS.register("nst")
class NeuronSelectivityTransfer(DistillationMethod):
    def __init__(self, layer: str = "conv", lam: float = 50.0) -> None:
        super().__init__()
        if not lam >= 0:
            raise UsageError(f"lam = {lam!r}: expected >= 0")
        self.layers = (layer,)
        self.lam = float(lam)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        (layer,) = self.layers
        f_s, f_t = self.features(student, teacher, same_shape=False)
        f_s, f_t = pooled_maps("nst", layer, f_s, f_t, "a channel's pattern over one position is just its sign")
        s, t = selectivity_patterns(f_s), selectivity_patterns(f_t)
        mmd = mean_poly_kernel(t, t) + mean_poly_kernel(s, s) - 2 * mean_poly_kernel(s, t)
        return self.lam * mmd.mean()
