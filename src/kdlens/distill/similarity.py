"""Similarity and dis-similarity losses between factors, IE-KD Table 6(a).

Every function takes two (B, ...) tensors, flattens each sample and returns a
scalar averaged over the batch. The factors are L2-normalised per sample
first, as in IE-KD Eq. 2-3 (and FT, whose normalisation IE-KD follows).

``DISTANCES`` maps a metric name to a pair ``(inheritance, exploration)``:
the inheritance loss pulls the student's factor towards the teacher's, the
exploration loss pushes it away. Following the paper ("we use L2 to represent
the L2 distance as similarity metric and its negative counterpart as
dis-similarity metric"), exploration is the negative of the distance, except
for ``l1_cka``, whose exploration term is the linear CKA between the two sets
of factors over the batch (Kornblith et al. 2019), a similarity to minimise.

Scale: ``l1`` and ``l2`` are per element, i.e. Eq. 2's norm divided by the
number of elements d (l1) or by sqrt(d) (l2), as the FT authors' code does
with ``nn.L1Loss``. That is the scale at which the paper's weights
lambda = 50 are of the order of the cross-entropy.
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
import torch
from torch import Tensor

from kdlens.errors import UsageError

Distance = Callable[[Tensor, Tensor], Tensor]


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.flatten(1), dim=1)


def l1_distance(x: Tensor, y: Tensor) -> Tensor:
    """mean_b ||x̂_b - ŷ_b||_1 / d."""
    return (_unit(x) - _unit(y)).abs().mean()


def l2_distance(x: Tensor, y: Tensor) -> Tensor:
    """mean_b ||x̂_b - ŷ_b||_2 / sqrt(d)."""
    diff = _unit(x) - _unit(y)
    return (torch.linalg.vector_norm(diff, dim=1) / diff.shape[1] ** 0.5).mean()


def cosine_distance(x: Tensor, y: Tensor) -> Tensor:
    """mean_b 1 - cos(x_b, y_b)."""
    return (1 - (_unit(x) * _unit(y)).sum(1)).mean()


def partial_l2_distance(x: Tensor, y: Tensor) -> Tensor:
    """OD's partial L2 (Heo et al. 2019) with margin 0 on normalised factors:
    squared differences, except where the student is already below a
    non-positive target; mean over elements."""
    s, t = _unit(x), _unit(y)
    keep = ((s > t) | (t > 0)).to(s.dtype)
    return ((s - t).pow(2) * keep).mean()


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA of two representations of the same n samples (n, p1), (n, p2):
    ||Y_cᵀ X_c||_F² / (||X_cᵀ X_c||_F ||Y_cᵀ Y_c||_F), columns centred.
    Differentiable; computed through the n x n Gram matrices."""
    x, y = x.flatten(1), y.flatten(1)
    if x.shape[0] != y.shape[0]:
        raise UsageError(f"CKA of {x.shape[0]} and {y.shape[0]} samples: expected the same samples on both sides")
    if x.shape[0] < 2:
        raise UsageError(f"CKA of {x.shape[0]} sample(s): expected at least 2")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    gx, gy = x @ x.T, y @ y.T
    hsic = (gx * gy).sum()
    denominator = gx.pow(2).sum().sqrt() * gy.pow(2).sum().sqrt()
    if denominator <= 0:
        raise UsageError("CKA of a representation with no variance across samples: undefined")
    return hsic / denominator


def _negative(distance: Distance) -> Distance:
    def exploration(x: Tensor, y: Tensor) -> Tensor:
        return -distance(x, y)

    exploration.__name__ = f"negative_{distance.__name__}"
    return exploration


def _cka_of_factors(x: Tensor, y: Tensor) -> Tensor:
    """linear_cka as a loss term: 0 (no gradient) for a batch with no variance
    or fewer than 3 samples, where CKA is undefined or always 1."""
    if x.shape[0] < 3:
        return x.new_zeros(())
    try:
        return linear_cka(_unit(x), _unit(y))
    except ValueError:
        return x.new_zeros(())


DISTANCES: dict[str, tuple[Distance, Distance]] = {
    "l1": (l1_distance, _negative(l1_distance)),
    "l2": (l2_distance, _negative(l2_distance)),
    "cos": (cosine_distance, _negative(cosine_distance)),
    "partial_l2": (partial_l2_distance, _negative(partial_l2_distance)),
    "l1_cka": (l1_distance, _cka_of_factors),
}


def inheritance_exploration(metric: str) -> tuple[Distance, Distance]:
    try:
        return DISTANCES[metric]
    except KeyError:
        raise UsageError(f"metric = {metric!r}: expected one of {', '.join(DISTANCES)}") from None


__all__ = ["DISTANCES", "inheritance_exploration", "linear_cka"]
