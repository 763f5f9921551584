"""Relational knowledge distillation (RKD-DA), the losses of

    Park, Kim, Lu, Cho. "Relational Knowledge Distillation." CVPR 2019.

Each sample's feature at the method's layer is flattened to a vector (t_i for
the teacher, s_i for the student, i = 1..B; their lengths may differ). The
student learns the teacher's *relations* between samples, not the features:

distance-wise, with mu the mean distance over the pairs i != j,

    psi_D(i, j) = ||t_i - t_j||_2 / mu_t
    L_D = mean_{i, j} l_delta( psi_D^s(i, j) - psi_D^t(i, j) )

angle-wise, the cosine of the angle at i between j and k,

    psi_A(i, j, k) = < (t_j - t_i)/||t_j - t_i||, (t_k - t_i)/||t_k - t_i|| >
    L_A = mean_{i, j, k} l_delta( psi_A^s(i, j, k) - psi_A^t(i, j, k) )

and L = beta * (lambda_d * L_D + lambda_a * L_A), where l_delta is the Huber
(smooth-L1) loss with delta = 1: x²/2 for |x| <= 1, |x| - 1/2 beyond.

The means run over all B² pairs and B³ triplets, the degenerate ones
included (pairs with i = j, where psi_D = 0; triplets with j = i or k = i,
where a zero vector's direction is taken as 0, so psi_A = 0): RepDistiller's
form (``RKDLoss``, Tian, Krishnan, Isola, ICLR 2020,
github.com/HobbitLong/RepDistiller); the paper writes sums over the tuples. The defaults are RepDistiller's:
lambda_d = 25, lambda_a = 50 (its ``w_d``, ``w_a``) and beta = 1 (``-b 1``).
RepDistiller applies RKD to the pooled embedding before the classifier; here it
flattens whatever layer it is given (a conv map becomes a C*H*W vector).

Distances and angles are computed from the Gram matrix of the batch-centred
vectors (both are invariant to the centring), in float64, which needs
O(B² + B³) memory rather than the O(B² D) of differencing every pair of D-long
vectors. Two samples closer than ~1e-5 of their norm count as coinciding
(distance 0, no direction). The teacher is detached. A batch needs at least 2
samples; where every distance is zero (a collapsed feature) mu is taken as 1
rather than dividing by zero.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlens.distill.base import METHODS, DistillationMethod
from kdlens.errors import UsageError

# A squared distance below this fraction of ||x_i||² + ||x_j||² (after centring)
# counts as zero: two samples closer than ~1e-5 of their norm coincide.
_RELATIVE_ZERO = 1e-10
_TINY = 1e-30


def _centred_gram(x: Tensor) -> Tensor:
    """The (B, B) Gram matrix of the flattened, batch-centred samples, in float64
    (the distances below are differences of its entries)."""
    x = x.flatten(1).double()
    x = x - x.mean(0, keepdim=True)
    return x @ x.t()


def _squared_distances(gram: Tensor) -> tuple[Tensor, Tensor]:
    """(B, B) squared Euclidean distances from a Gram matrix, and where they are non-zero."""
    norms = gram.diagonal()
    scale = norms[:, None] + norms[None, :]
    squared = (scale - 2 * gram).clamp_min(0)
    off_diagonal = ~torch.eye(len(gram), dtype=torch.bool, device=gram.device)
    present = (squared > _RELATIVE_ZERO * scale + _TINY) & off_diagonal
    return torch.where(present, squared, torch.zeros_like(squared)), present


def normalised_distances(x: Tensor) -> Tensor:
    """psi_D: (B, B) pairwise distances of the flattened samples over their mean off-diagonal distance."""
    batch = x.shape[0]
    squared, present = _squared_distances(_centred_gram(x))
    distances = torch.where(present, squared.clamp_min(_TINY).sqrt(), torch.zeros_like(squared))
    mean = distances.sum() / (batch * (batch - 1))
    return (distances / torch.where(mean > 0, mean, torch.ones_like(mean))).to(x.dtype)


def angles(x: Tensor) -> Tensor:
    """psi_A: (B, B, B), [i, j, k] the cosine at x_i between x_j - x_i and x_k - x_i (0 if either is zero)."""
    gram = _centred_gram(x)
    squared, present = _squared_distances(gram)
    inverse = torch.where(present, squared.clamp_min(_TINY).rsqrt(), torch.zeros_like(squared))  # 1/||x_j - x_i||
    diag = gram.diagonal()
    # <x_j - x_i, x_k - x_i> = G_jk - G_ij - G_ik + G_ii
    inner = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diag[:, None, None]
    return (inner * inverse[:, :, None] * inverse[:, None, :]).to(x.dtype)


@METHODS.register("rkd")
class RelationalKD(DistillationMethod):
    def __init__(
        self, layer: str = "conv", beta: float = 1.0, lambda_d: float = 25.0, lambda_a: float = 50.0
    ) -> None:
        super().__init__()
        for name, value in (("beta", beta), ("lambda_d", lambda_d), ("lambda_a", lambda_a)):
            if not value >= 0:
                raise UsageError(f"{name} = {value!r}: expected >= 0")
        self.layers = (layer,)
        self.beta = float(beta)
        self.lambda_d = float(lambda_d)
        self.lambda_a = float(lambda_a)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        (layer,) = self.layers
        f_s, f_t = self.features(student, teacher, same_shape=False)
        if f_s.shape[0] < 2 or f_s.shape[0] != f_t.shape[0]:
            raise UsageError(
                f"layer {layer!r}: batches of {f_s.shape[0]} student and {f_t.shape[0]} teacher samples; "
                "rkd expected the same batch of at least 2"
            )
        loss = f_s.new_zeros(())
        if self.lambda_d:
            loss = loss + self.lambda_d * F.smooth_l1_loss(normalised_distances(f_s), normalised_distances(f_t))
        if self.lambda_a:
            loss = loss + self.lambda_a * F.smooth_l1_loss(angles(f_s), angles(f_t))
        return self.beta * loss
