"""Linear Centered Kernel Alignment (CKA) between two representations.

Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations
Revisited" (ICML 2019), Eq. 5 (linear kernel). For n examples with
representations X (n, p1) and Y (n, p2), column-centred to X_c and Y_c:

    CKA(X, Y) = ||Y_cᵀ X_c||_F² / (||X_cᵀ X_c||_F · ||Y_cᵀ Y_c||_F)

It is 1 for X = Y, lies in [0, 1], and is invariant to orthogonal transforms
and isotropic scaling of either side (but not to arbitrary invertible linear
maps). The IE-KD paper (Sec. 4.7, Fig. 4a) measures it between the student's
inheritance and exploration channels: :func:`channel_split_cka`.

The arithmetic is the differentiable ``kdlens.distill.similarity.linear_cka``
(IE-KD's CKA loss), run here in float64 on detached, validated inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlens.distill.similarity import linear_cka as differentiable_cka
from kdlens.errors import UsageError
from kdlens.probes._channels import channel_index


def _centred(t: Tensor, name: str) -> Tensor:
    m = t.detach().reshape(t.shape[0], -1).to(dtype=torch.float64)
    if m.shape[1] == 0:
        raise UsageError(f"{name} has shape {tuple(t.shape)}: expected at least one feature per example")
    if not torch.isfinite(m).all():
        raise UsageError(f"{name} contains NaN or inf values")
    centred = m - m.mean(dim=0, keepdim=True)
    # Relative test: centring a constant column can leave rounding residue.
    if centred.abs().max() <= 1e-12 * m.abs().max():
        raise UsageError(f"{name} has zero variance across its {m.shape[0]} examples: CKA is undefined")
    return centred


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between ``x`` (n, ...) and ``y`` (n, ...).

    Both are flattened to (n, p) and column-centred; the value is
    ``||Y_cᵀ X_c||_F² / (||X_cᵀ X_c||_F ||Y_cᵀ Y_c||_F)`` computed in float64.
    Raises ``ValueError`` when the example counts differ, when n < 2, or when a
    side has zero variance (CKA is undefined there).
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.dim() < 1:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise UsageError(f"{name} has shape {shape}: expected a tensor (n, ...) with a batch dimension")
    n = x.shape[0]
    if y.shape[0] != n:
        raise UsageError(f"x has {n} examples but y has {y.shape[0]}: expected the same n on both sides")
    if n < 2:
        raise UsageError(f"linear_cka got n = {n} examples: expected at least 2")
    return float(differentiable_cka(_centred(x, "x"), _centred(y, "y")))


def channel_split_cka(features: Tensor, first: Tensor, second: Tensor) -> float:
    """Linear CKA between two channel subsets of one feature map.

    ``features`` is (n, C, ...) (e.g. a conv layer's (n, C, H, W) output);
    ``first`` and ``second`` are 1-D integer tensors of channel indices. This is
    the IE-KD paper's "CKA between the inheritance and exploration channels"
    (Sec. 4.7, Fig. 4a): ``linear_cka(features[:, first], features[:, second])``.
    """
    if not isinstance(features, Tensor) or features.dim() < 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise UsageError(f"features has shape {shape}: expected (n, C, ...)")
    channels = features.shape[1]
    a = channel_index(first, channels, "first")
    b = channel_index(second, channels, "second")
    return linear_cka(features[:, a.to(features.device)], features[:, b.to(features.device)])
