"""Probabilistic knowledge transfer (PKT), the loss of

    Passalis, Tefas. "Learning Deep Representations with Probabilistic
    Knowledge Transfer." ECCV 2018.

The student matches the teacher's *distribution of similarities* between
samples. With x_i the flattened feature of sample i at the method's layer
(lengths may differ between the networks) and the cosine-similarity kernel
scaled to [0, 1],

    K(x_i, x_j) = ( x_i . x_j / (||x_i|| ||x_j||) + 1 ) / 2,
    p_{j|i} = K(t_i, t_j) / sum_k K(t_i, t_k)       (teacher)
    q_{j|i} = K(s_i, s_j) / sum_k K(s_i, s_k)       (student)
    L = beta * mean_{i, j} p_{j|i} log( (p_{j|i} + eps) / (q_{j|i} + eps) )

the KL divergence between the conditional distributions, in the authors' code
form (github.com/passalis/probabilistic_kt, as in RepDistiller, Tian,
Krishnan, Isola, ICLR 2020, github.com/HobbitLong/RepDistiller, ``PKT``):
the kernel includes j = i, the B x B terms are *averaged* (the paper sums
them), eps = 1e-7, each vector is divided by ||x|| + eps and a zero vector is
left zero. beta = 30000 is RepDistiller's weight (``-b 30000`` in its
``run_cifar_distill.sh``), which applies PKT to the pooled embedding before
the classifier; here it flattens whatever layer it is given. The teacher is
detached.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from kdlens.distill.base import METHODS, DistillationMethod, paired_features
from kdlens.errors import UsageError

EPS = 1e-7


def conditional_similarities(feature: Tensor, eps: float = EPS) -> Tensor:
    """(B, ...) -> (B, B): row i is p_{.|i}, the cosine kernel scaled to [0, 1] and normalised over j."""
    x = feature.flatten(1)
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    kernel = (x @ x.t() + 1) / 2
    return kernel / kernel.sum(1, keepdim=True)


@METHODS.register("pkt")
class ProbabilisticKT(DistillationMethod):
    def __init__(self, layer: str = "conv", beta: float = 30000.0) -> None:
        super().__init__()
        if not beta >= 0:
            raise UsageError(f"beta = {beta!r}: expected >= 0")
        self.layers = (layer,)
        self.beta = float(beta)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        f_s, f_t = paired_features(self, student, teacher)
        p = conditional_similarities(f_t)
        q = conditional_similarities(f_s)
        return self.beta * (p * torch.log((p + EPS) / (q + EPS))).mean()
