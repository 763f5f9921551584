"""Similarity-preserving knowledge distillation (SP), the loss of

    Tung, Mori. "Similarity-Preserving Knowledge Distillation." ICCV 2019.

With Q_s, Q_t the student's and the teacher's features at the method's layer
flattened to (B, D_s) and (B, D_t) (D may differ), the B x B similarity
matrices are row-wise L2-normalised Gram matrices:

    G = Q Q^T,   G~[i, :] = G[i, :] / ||G[i, :]||_2
    L = gamma / B² * || G~_t - G~_s ||_F²

The paper sums L over pairs of layers; here it is one layer, the method's.
gamma = 3000 is RepDistiller's weight for SP (``-b 3000`` in its
``run_cifar_distill.sh``; Tian, Krishnan, Isola, ICLR 2020,
github.com/HobbitLong/RepDistiller), which applies it to the last feature map
before pooling. A row of all zeros (a sample whose feature is zero) stays
zero. The teacher is detached.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch.nn.functional as F
from torch import Tensor

from kdlens.distill.base import METHODS, DistillationMethod, paired_features
from kdlens.errors import UsageError


def similarity_matrix(feature: Tensor) -> Tensor:
    """(B, ...) -> (B, B): the Gram matrix of the flattened samples, each row L2-normalised."""
    q = feature.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


@METHODS.register("sp")
class SimilarityPreserving(DistillationMethod):
    def __init__(self, layer: str = "conv", gamma: float = 3000.0) -> None:
        super().__init__()
        if not gamma >= 0:
            raise UsageError(f"gamma = {gamma!r}: expected >= 0")
        self.layers = (layer,)
        self.gamma = float(gamma)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        f_s, f_t = paired_features(self, student, teacher)
        batch = f_s.shape[0]
        difference = similarity_matrix(f_t) - similarity_matrix(f_s)
        return self.gamma * difference.pow(2).sum() / (batch * batch)
