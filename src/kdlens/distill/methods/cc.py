"""Correlation congruence (CC), the loss of

    Peng, Jin, Liu, Zhou, Wu, Liu, Li, Zhang. "Correlation Congruence for
    Knowledge Distillation." ICCV 2019.

The student's and the teacher's features at the method's layer are flattened
and mapped by linear embeddings e_s, e_t to a common dimension (``feat_dim``,
128) and L2-normalised: f_i = e(x_i) / ||e(x_i)||. The correlation between
two samples is a Gaussian RBF kernel, approximated by its Taylor expansion of
order P around f_i . f_j (exact as P -> infinity for unit vectors,
since ||f_i - f_j||² = 2 - 2 f_i . f_j):

    k(f_i, f_j) = exp(-gamma ||f_i - f_j||²)
                ~ sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (f_i . f_j)^p

and the loss is the mean squared difference of the two B x B correlation
matrices (the paper's L_CC = 1/B² ||psi_t - psi_s||_2²):

    L = beta / B² * sum_{i, j} ( k(f^t_i, f^t_j) - k(f^s_i, f^s_j) )²

Which CC this is: the paper's kernel form, with its gamma = 0.4 and P = 2.
RepDistiller's ``Correlation`` (Tian, Krishnan, Isola, ICLR 2020,
github.com/HobbitLong/RepDistiller; code the CC authors shared with it) is a
different, simpler loss, mean_i sum_d |e_s - e_t|_{i,d} |e_s - e_t|_{i+1,d} on
unnormalised embeddings, which we do not implement. We do follow RepDistiller
in what it is applied to and how it is weighted: linear embeddings of both
networks' features (``LinearEmbed`` to ``feat_dim`` = 128), *both* trained
with the student (the teacher's network stays frozen, only its embedding
learns), and beta = 0.02 (``-b 0.02`` in its ``run_cifar_distill.sh``). The
paper adds L_CC to KD (its total loss alpha L_CE + (1 - alpha) L_KD + beta L_CC);
here it is added to CE alone. The teacher's feature is detached before its
embedding.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod, paired_features
from kdlens.errors import UsageError


def taylor_rbf_correlation(embedding: Tensor, gamma: float, order: int) -> Tensor:
    """(B, d) -> (B, B): the order-P Taylor expansion of exp(-gamma ||f_i - f_j||²)
    for the L2-normalised rows f of ``embedding``."""
    f = F.normalize(embedding, dim=1)
    cosine = f @ f.t()
    total = cosine.new_zeros(cosine.shape)
    for p in range(order + 1):
        total = total + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cosine.pow(p)
    return total


@METHODS.register("cc")
class CorrelationCongruence(DistillationMethod):
    def __init__(
        self, layer: str = "conv", beta: float = 0.02, gamma: float = 0.4, order: int = 2, feat_dim: int = 128
    ) -> None:
        super().__init__()
        if not beta >= 0:
            raise UsageError(f"beta = {beta!r}: expected >= 0")
        if not gamma > 0:
            raise UsageError(f"gamma = {gamma!r}: expected > 0")
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise UsageError(f"order = {order!r}: expected an integer >= 0 (the Taylor expansion's P)")
        if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1:
            raise UsageError(f"feat_dim = {feat_dim!r}: expected an integer >= 1")
        self.layers = (layer,)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.order = order
        self.feat_dim = feat_dim
        self.embed_s: Optional[nn.Linear] = None
        self.embed_t: Optional[nn.Linear] = None

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        (layer,) = self.layers
        self.embed_s = nn.Linear(student[layer].flatten(1).shape[1], self.feat_dim)
        self.embed_t = nn.Linear(teacher[layer].flatten(1).shape[1], self.feat_dim)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        if self.embed_s is None or self.embed_t is None:
            raise RuntimeError("cc is not set up; call setup() with a batch of features first")
        f_s, f_t = paired_features(self, student, teacher)
        batch = f_s.shape[0]
        k_s = taylor_rbf_correlation(self.embed_s(f_s.flatten(1)), self.gamma, self.order)
        k_t = taylor_rbf_correlation(self.embed_t(f_t.flatten(1)), self.gamma, self.order)
        return self.beta * (k_t - k_s).pow(2).sum() / (batch * batch)
