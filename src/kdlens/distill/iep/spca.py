"""Stacked PCA (SPCA), the knowledge-producing half of

    Lee, Song. "Interpretable Embedding Procedure Knowledge Transfer via Stacked
    Principal Component Analysis and Graph Neural Network." AAAI 2021.

At one sensing point of a network, for a batch of N feature maps (sec.
"Producing IEP Knowledge via SPCA", Fig. 3):

1. First PCA, per sample (Eq. 1-3). The H x W x D map is the HW x D matrix
   F_n = U_n Σ_n V_n^*; its first right singular vector v_{n,0} (a unit vector
   in R^D) is sign-corrected, p_n = s_n v_{n,0} with
   s_n = sign(max(v_{n,0}) + min(v_{n,0})) (Eq. 2): the entry of largest
   magnitude becomes positive. ``first_principal_components``.
2. Stereographic projection of the unit p_n to a plane (Eq. 4),
   ``stereographic``.
3. Second PCA of the projected batch: incremental PCA (Ross et al. 2008) whose
   mean is an exponential moving average, keeping the top D/2 components,
   C = (P̄ - μ) V (Eq. 5-6). ``IncrementalPCA``; ``batch_pca`` is the
   per-batch PCA of the Table 5 ablation ("PCA-PCA").
4. The affinity matrix of cosine similarities between the rows of C (Eq. 7),
   ``affinity``.

The student (Eq. 16-17) goes through the same steps with the teacher's
statistics: its first PC is its map projected on the teacher's (sign-corrected)
first left singular vector, ``student_principal_vectors``, and its components
are ``project``-ed with the teacher's mean and components.

Conventions: the first PCA is an uncentred one (the SVD of F_n itself, Eq. 3,
as the authors' code does); (N, C, H, W) maps are read as F_n = the HW x C
matrix of channel vectors at each position.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from kdlens.errors import UsageError


def feature_matrix(features: Tensor) -> Tensor:
    """(N, C, H, W) maps as the (N, HW, C) matrices F_n of Eq. 3; a 3-D
    tensor is taken to be (N, HW, D) matrices already."""
    if features.dim() == 4:
        return features.flatten(2).mT
    if features.dim() == 3:
        return features
    raise UsageError(f"features of shape {tuple(features.shape)}: expected (N, C, H, W) maps or (N, HW, D) matrices")


def principal_sign(vectors: Tensor, dim: int = -1) -> Tensor:
    """Eq. 2's s = sign(max(v) + min(v)) along ``dim`` (kept, size 1), +1 on a
    tie: the entry of largest magnitude of s*v is positive."""
    total = vectors.amax(dim, keepdim=True) + vectors.amin(dim, keepdim=True)
    return torch.where(total < 0, -1.0, 1.0).to(vectors.dtype)


def _top_eigenvector(gram: Tensor, max_squarings: int = 24) -> Tensor:
    """The eigenvector of the largest eigenvalue of symmetric positive
    semi-definite (..., D, D) matrices, by repeated squaring.

    M <- (M / tr M)^2 is G^(2^k) up to scale after k squarings: each
    eigenvalue's share of the trace goes as (λ_j / λ_0)^(2^k), so M tends to
    v_0 v_0ᵀ doubly exponentially fast. tr(M^2) with tr M = 1 is 1 when M has
    rank one; we square until 1 - tr(M^2) <= sqrt(eps) for every matrix, then
    once more (the discarded share is then below eps), take M's column of
    largest diagonal entry (|v_i| largest) and polish it with two products by
    G. On the uncentred Gram matrices of feature maps that is about five
    squarings (the trained teacher of compare-iep-synthetic has λ_1/λ_0 at
    most 0.61 at every stage on test images): a few batched matrix products
    instead of a full decomposition. A matrix whose top eigenvalue is repeated
    never reaches rank one: after ``max_squarings`` (G^(2^24)) it returns a
    unit vector of the top eigenspace, which is as good as any there. An
    all-zero matrix gives the zero vector.
    """
    info = torch.finfo(gram.dtype)
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    empty = trace <= info.tiny
    m = gram / trace.clamp_min(info.tiny)[..., None, None]
    for _ in range(max_squarings):
        m = m @ m
        share = m.diagonal(dim1=-2, dim2=-1).sum(-1)  # tr(M^2) of the M before
        m = m / share.clamp_min(info.tiny)[..., None, None]
        if bool(((1 - share <= info.eps**0.5) | empty).all()):
            m = m @ m
            break
    largest = m.diagonal(dim1=-2, dim2=-1).argmax(-1)
    v = torch.take_along_dim(m, largest[..., None, None], dim=-1)[..., 0]
    for _ in range(2):
        v = F.normalize(v, dim=-1, eps=info.tiny)
        v = (gram @ v[..., None])[..., 0]
    return F.normalize(v, dim=-1, eps=info.tiny)


class _TopEigenpair(torch.autograd.Function):
    """Largest eigenvalue and its eigenvector of a batch of symmetric positive
    semi-definite matrices (Gram matrices).

    Forward: ``_top_eigenvector`` (repeated squaring) and the Rayleigh
    quotient. Backward: first-order perturbation of the top pair only (Magnus
    1985),

        dλ_0 = v_0ᵀ dG v_0,    dv_0 = Σ_{j>0} v_j v_jᵀ dG v_0 / (λ_0 - λ_j),

    so the gradient involves only the gaps λ_0 - λ_j to the top eigenvalue,
    never the gaps λ_i - λ_j between the others. The sum is one linear solve,
    x = (λ_0 I - G + λ_0 v_0 v_0ᵀ + δI)^{-1} (I - v_0 v_0ᵀ) g: the matrix has
    the eigenvalues λ_0 - λ_j + δ off v_0 and λ_0 + δ on it, so no other
    eigenvector is needed. The shift δ = eps(dtype) * λ_0 (and a tiny absolute
    value) only keeps a truly degenerate top pair, whose eigenvector is
    undefined, finite.
    """

    @staticmethod
    def forward(ctx, gram: Tensor) -> tuple[Tensor, Tensor]:
        vector = _top_eigenvector(gram)
        value = (vector * (gram @ vector[..., None])[..., 0]).sum(-1)
        ctx.save_for_backward(gram, value, vector)
        return value, vector

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value: Optional[Tensor], grad_vector: Optional[Tensor]) -> Tensor:
        gram, value, top = ctx.saved_tensors
        outer_top = top[..., :, None] * top[..., None, :]
        grad = torch.zeros_like(gram)
        if grad_value is not None:
            grad = grad + grad_value[..., None, None] * outer_top
        if grad_vector is not None:
            info = torch.finfo(gram.dtype)
            shift = (info.eps * value.abs()).clamp_min(info.tiny**0.5)
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            system = (value + shift)[..., None, None] * eye - gram + value[..., None, None] * outer_top
            residual = grad_vector - top * (top * grad_vector).sum(-1, keepdim=True)
            w = torch.linalg.solve(system, residual)
            outer = w[..., :, None] * top[..., None, :]
            grad = grad + 0.5 * (outer + outer.mT)
        return grad


def top_eigenpair(gram: Tensor) -> tuple[Tensor, Tensor]:
    """(λ_0, v_0) of symmetric positive semi-definite (..., D, D) matrices,
    differentiable through a backward that depends only on the gaps to the top
    eigenvalue."""
    return _TopEigenpair.apply(gram)


class FirstPC(NamedTuple):
    """The sign-corrected first singular triplet of each F_n = U Σ V^*."""

    vector: Tensor  # (N, D): p_n = s_n v_{n,0}, Eq. 1-2
    left: Tensor  # (N, HW): s_n u_{n,0}, the teacher's side of Eq. 16
    singular_value: Tensor  # (N,): σ_{n,0}


def first_principal_components(features: Tensor) -> FirstPC:
    """First PCA of each sample, Eq. 1-3, differentiable.

    The first right singular vector of F_n (HW x D) is the top eigenvector of
    the D x D Gram matrix F_nᵀF_n; when HW < D the top eigenvector u of the
    smaller HW x HW matrix F_nF_nᵀ gives v = F_nᵀu / ||F_nᵀu||, the same
    function of F_n. Why not ``torch.linalg.svd``'s gradient: it divides by
    σ_i² - σ_j² for *every* pair of singular values, so it is NaN whenever two
    of the discarded ones coincide (dead channels, HW < D, any map of rank
    below min(HW, D)) although the first PC is then perfectly defined;
    ``eigh``'s built-in gradient has the same fault. ``top_eigenpair``'s
    backward needs only the gaps to the top eigenvalue, the conditioning of
    the first PC itself. The forward squares the Gram matrix of at most
    min(HW, D)² entries a few times rather than decomposing it: a full
    ``eigh`` of a batch of 64 x 64 matrices is most of the teacher's SPCA
    cost (``benchmarks/iep_step.py``). Half precision is computed in
    float32. An all-zero map has no first PC: its p is some unit or zero
    vector, its u zero, and its gradients stay finite.
    """
    m = feature_matrix(features)
    dtype = m.dtype
    if dtype not in (torch.float32, torch.float64):
        m = m.float()
    hw, d = m.shape[-2:]
    tiny = torch.finfo(m.dtype).tiny
    if hw >= d:
        _, v = top_eigenpair(m.mT @ m)
        fv = (m @ v[..., None])[..., 0]
        sigma = torch.linalg.vector_norm(fv, dim=-1)
        u = fv / sigma[..., None].clamp_min(tiny)
    else:
        _, u = top_eigenpair(m @ m.mT)
        ftu = (m.mT @ u[..., None])[..., 0]
        sigma = torch.linalg.vector_norm(ftu, dim=-1)
        v = ftu / sigma[..., None].clamp_min(tiny)
    sign = principal_sign(v.detach())
    return FirstPC((sign * v).to(dtype), (sign * u).to(dtype), sigma.to(dtype))


def student_principal_vectors(features: Tensor, teacher_left: Tensor) -> Tensor:
    """Eq. 16: p^S_n = s_n u_nᵀ F^S_n / ||s_n u_nᵀ F^S_n||, the student's map
    projected on the teacher's sign-corrected first left singular vector
    (``FirstPC.left``, detached here), as the authors' code does. The student
    then needs no decomposition of its own. Needs the teacher's HW; the
    student's D must match the teacher's for Eq. 17."""
    m = feature_matrix(features)
    if teacher_left.shape != m.shape[:2]:
        raise UsageError(
            f"teacher left singular vectors of shape {tuple(teacher_left.shape)}: expected "
            f"(N, HW) = {tuple(m.shape[:2])} to match the student's feature"
        )
    projected = (teacher_left.detach().to(m.dtype)[:, None, :] @ m)[:, 0]
    return F.normalize(projected, dim=-1)


def sphere_center(dim: int, *, dtype: Optional[torch.dtype] = None, device=None) -> Tensor:
    """o = [1/√D, ..., 1/√D] of Eq. 4."""
    return torch.full((dim,), dim**-0.5, dtype=dtype, device=device)


def stereographic(p: Tensor) -> Tensor:
    """Eq. 4, sphere to plane: p̄ = (p + o) / cos(arccos(pᵀo)/2)² - 2o.

    With cos²(θ/2) = (1 + cos θ)/2 this is p̄ = 2(p - (pᵀo) o) / (1 + pᵀo):
    the projection from the antipode -o onto the tangent plane at o, shifted
    by -o so that the plane is {x : xᵀo = 0} through the origin; ||p̄|| =
    2 tan(θ/2), θ the angle between p and o. Computed in that algebraic form,
    which avoids arccos's infinite derivative at p = o and keeps p̄ on the
    plane up to rounding. Singular only at p = -o (the denominator is floored
    at eps there); Eq. 2's sign correction rules p = -o out.
    """
    o = sphere_center(p.shape[-1], dtype=p.dtype, device=p.device)
    cosine = (p @ o)[..., None]
    return 2 * (p - cosine * o) / (1 + cosine).clamp_min(torch.finfo(p.dtype).eps)


def inverse_stereographic(x: Tensor) -> Tensor:
    """The inverse of ``stereographic``, plane to unit sphere:
    p = (4x + (4 - ||x||²) o) / (4 + ||x||²), after removing x's component
    along o (the plane is xᵀo = 0)."""
    o = sphere_center(x.shape[-1], dtype=x.dtype, device=x.device)
    x = x - (x @ o)[..., None] * o
    square = (x * x).sum(-1, keepdim=True)
    return (4 * x + (4 - square) * o) / (4 + square)


class PCAStats(NamedTuple):
    """What the second PCA hands on: μ and V of Eq. 5 (V's columns orthonormal
    and sign-corrected as in Eq. 2) and the singular values Σ."""

    mean: Tensor  # (D,)
    components: Tensor  # (D, k)
    singular_values: Tensor  # (k,), descending


def _leading_components(rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k right singular vectors (D, k) and values (k,) of ``rows``;
    with fewer than k rows, an orthonormal completion with singular value 0."""
    _, s, vh = torch.linalg.svd(rows, full_matrices=rows.shape[0] < k)
    v = vh[:k].mT
    s = F.pad(s[:k], (0, k - min(k, s.shape[0])))
    return v * principal_sign(v, dim=0), s


def _components(dim: int, components: Optional[int]) -> int:
    k = dim // 2 if components is None else components
    if not 1 <= k <= dim:
        raise UsageError(f"{k} components of {dim}-dimensional points: expected 1 <= components <= {dim} (D/2 by default)")
    return k


def project(x: Tensor, stats: PCAStats) -> Tensor:
    """Eq. 5 and 17: C = (x - μ) V, (N, D) -> (N, k); gradients flow to x only."""
    if x.shape[-1] != stats.mean.shape[0]:
        raise UsageError(f"points of dimension {x.shape[-1]}: expected {stats.mean.shape[0]}, the PCA's dimension")
    return (x - stats.mean.to(x.dtype)) @ stats.components.to(x.dtype)


@torch.no_grad()
def batch_pca(x: Tensor, components: Optional[int] = None) -> PCAStats:
    """PCA of one batch (N, D), its own mean and the top ``components`` (D/2 by
    default, Eq. 6): Table 5's "PCA-PCA" ablation. With N - 1 < components the
    trailing ones are an arbitrary completion with singular value 0, the rank
    problem the paper gives for preferring IPCA. No gradient (teacher side)."""
    if x.dim() != 2:
        raise UsageError(f"points of shape {tuple(x.shape)}: expected (N, D)")
    k = _components(x.shape[1], components)
    mean = x.mean(0)
    v, s = _leading_components(x - mean, k)
    return PCAStats(mean, v, s)


class IncrementalPCA(nn.Module):
    """The second PCA of SPCA (Eq. 5-6): incremental PCA over mini-batches,
    Ross, Lim, Lin, Yang, "Incremental learning for robust visual tracking",
    IJCV 2008 (sequential Karhunen-Loeve with a mean update), "identical to the
    conventional IPCA, except that the mean vector calculation is replaced
    with an exponential moving average".

    Per ``update(B)`` of m points (mean μ_B), with n points seen, the current
    mean μ, components V (D x k) and singular values Σ: the top k right
    singular vectors and values of the stacked rows

        [ Σ Vᵀ ;  B - μ_B ;  sqrt(n m / (n + m)) (μ_B - μ) ]      (Ross, Sec. 3.1)

    (Ross's forgetting factor f = 1: the teacher's distribution is
    stationary), then μ <- (1 - momentum) μ + momentum μ_B (Ross's running mean
    (n μ + m μ_B)/(n + m) with ``momentum=None``) and n <- n + m. The first
    batch sets μ = μ_B (no bias from a zero start). Components are
    sign-corrected column-wise as in Eq. 2, so they do not flip between
    updates (the authors' code does the same).

    Defaults: k = D/2, Eq. 6. momentum = 0.9 (weight of the current batch's
    mean) is the authors' released code (sseung0703/IEPKT, nets/
    Distillation.py, ``rate = .9``); the paper gives no value.

    The statistics are buffers, so they live in the state dict and a
    checkpoint carries them. ``update`` takes no gradient (the teacher's
    side); ``project`` (= ``forward``) is differentiable in its input and
    serves the student with the teacher's statistics (Eq. 17).
    """

    def __init__(self, dim: int, components: Optional[int] = None, momentum: Optional[float] = 0.9) -> None:
        super().__init__()
        if dim < 1:
            raise UsageError(f"dim = {dim!r}: expected a positive dimension")
        if momentum is not None and not 0 < momentum <= 1:
            raise UsageError(f"momentum = {momentum!r}: expected 0 < momentum <= 1, or None for the running mean")
        k = _components(dim, components)
        self.dim, self.k, self.momentum = dim, k, momentum
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.zeros(dim, k))
        self.register_buffer("singular_values", torch.zeros(k))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, components={self.k}, momentum={self.momentum}"

    @property
    def fitted(self) -> bool:
        return bool(self.count > 0)

    @torch.no_grad()
    def update(self, batch: Tensor) -> None:
        """Fold a batch of points (m, D) into the statistics."""
        if batch.dim() != 2 or batch.shape[1] != self.dim or batch.shape[0] < 1:
            raise UsageError(f"batch of shape {tuple(batch.shape)}: expected (m >= 1, {self.dim})")
        x = batch.detach().to(self.mean)
        m, n = x.shape[0], int(self.count)
        batch_mean = x.mean(0)
        if n == 0:
            rows, mean = x - batch_mean, batch_mean
        else:
            correction = (n * m / (n + m)) ** 0.5 * (batch_mean - self.mean)
            previous = self.singular_values[:, None] * self.components.mT
            rows = torch.cat([previous, x - batch_mean, correction[None]])
            weight = m / (n + m) if self.momentum is None else self.momentum
            mean = torch.lerp(self.mean, batch_mean, weight)
        v, s = _leading_components(rows, self.k)
        self.components.copy_(v)
        self.singular_values.copy_(s)
        self.mean.copy_(mean)
        self.count += m

    def stats(self) -> PCAStats:
        if not self.fitted:
            raise RuntimeError("IncrementalPCA has seen no data; call update() with a batch of the teacher's points first")
        return PCAStats(self.mean, self.components, self.singular_values)

    def project(self, x: Tensor) -> Tensor:
        """C = (x - μ) V (Eq. 5, 17), differentiable in x."""
        return project(x, self.stats())

    def forward(self, x: Tensor) -> Tensor:
        return self.project(x)


def affinity(c: Tensor) -> Tensor:
    """Eq. 7: A_vw = c_vᵀ c_w / (||c_v|| ||c_w||), (..., N, k) -> (..., N, N).
    Symmetric with a unit diagonal (a zero row gives a zero row and column)."""
    unit = F.normalize(c, dim=-1)
    return unit @ unit.mT
