"""The factor distances of IE-KD Table 6(a) and linear CKA, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kdlens.distill.similarity import (
    DISTANCES,
    cosine_distance,
    inheritance_exploration,
    l1_distance,
    l2_distance,
    linear_cka,
    partial_l2_distance,
)

# ------------------------------------------------------------ hand cases
#
# Sample A: x = [3, 4], y = [4, 3]  -> unit vectors x̂ = [.6, .8], ŷ = [.8, .6]
#   x̂ - ŷ = [-.2, .2]
#   l1  = (0.2 + 0.2) / 2                 = 0.2
#   l2  = sqrt((0.2² + 0.2²) / 2)          = 0.2
#   cos = 1 - (.6*.8 + .8*.6) = 1 - 0.96   = 0.04
#   partial_l2: both targets ŷ > 0, all kept: (0.04 + 0.04) / 2 = 0.04
#
# Sample B: x = [1, 0], y = [0, 5]  -> x̂ = [1, 0], ŷ = [0, 1], x̂ - ŷ = [1, -1]
#   l1 = (1 + 1)/2 = 1,  l2 = sqrt((1 + 1)/2) = 1,  cos = 1 - 0 = 1
#   partial_l2: element 0 has s = 1 > t = 0 (kept, 1), element 1 t = 1 > 0 (kept, 1): mean 1
#
# Batch [A, B] (the mean over samples; l1 and partial_l2 average over every element,
# which is the same here because both samples have d = 2):
#   l1 = (0.2 + 1)/2 = 0.6, l2 = (0.2 + 1)/2 = 0.6, cos = (0.04 + 1)/2 = 0.52,
#   partial_l2 = (0.04 + 1)/2 = 0.52
XA, YA = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
XAB, YAB = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[4.0, 3.0], [0.0, 5.0]])

HAND = {
    # name: (function, sample A, batch A+B)
    "l1": (l1_distance, 0.2, 0.6),
    "l2": (l2_distance, 0.2, 0.6),
    "cos": (cosine_distance, 0.04, 0.52),
    "partial_l2": (partial_l2_distance, 0.04, 0.52),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_distance_hand_worked_values(name):
    fn, single, batch = HAND[name]
    assert fn(XA, YA).item() == pytest.approx(single, abs=1e-6)
    assert fn(XAB, YAB).item() == pytest.approx(batch, abs=1e-6)
    # the registered inheritance loss is this very function
    assert DISTANCES[name][0] is fn


def test_partial_l2_ignores_student_below_non_positive_target():
    # x = [-4, 3] -> ŝ = [-.8, .6];  y = [-3, 4] -> t̂ = [-.6, .8]
    #   element 0: ŝ = -.8 <= t̂ = -.6 <= 0  -> ignored
    #   element 1: t̂ = .8 > 0               -> kept, (.6 - .8)² = 0.04
    #   mean over the 2 elements: 0.02        (the plain squared mean would be 0.04)
    x, y = torch.tensor([[-4.0, 3.0]]), torch.tensor([[-3.0, 4.0]])
    assert partial_l2_distance(x, y).item() == pytest.approx(0.02, abs=1e-6)
    # swapped: ŝ = [-.6, .8], t̂ = [-.8, .6]: element 0 has ŝ > t̂ (kept, 0.04),
    # element 1 t̂ > 0 (kept, 0.04): mean 0.04
    assert partial_l2_distance(y, x).item() == pytest.approx(0.04, abs=1e-6)
    # t̂ = 0 exactly counts as non-positive: x = [-1, 1] -> ŝ = [-1/√2, 1/√2],
    # y = [0, 1] -> t̂ = [0, 1]; element 0 ignored, element 1: (1/√2 - 1)² / 2
    x, y = torch.tensor([[-1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    expected = (1 / math.sqrt(2) - 1) ** 2 / 2
    assert partial_l2_distance(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_distances_normalise_each_sample_and_flatten():
    # A per-sample positive scale does not change anything (x̂ is the same) ...
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    scale = torch.tensor([0.1, 3.0, 50.0]).view(3, 1, 1, 1)
    for name, (inherit, _) in DISTANCES.items():
        assert inherit(x * scale, y).item() == pytest.approx(inherit(x, y).item(), rel=1e-5), name
        assert inherit(x, y / scale).item() == pytest.approx(inherit(x, y).item(), rel=1e-5), name
    # ... and the value is the mean of the per-sample values (same d everywhere).
    for name in ("l1", "l2", "cos", "partial_l2"):
        inherit = DISTANCES[name][0]
        per_sample = [inherit(x[i : i + 1], y[i : i + 1]).item() for i in range(3)]
        assert inherit(x, y).item() == pytest.approx(sum(per_sample) / 3, rel=1e-5), name
    # l1 on (B, C, H, W): mean |x̂ - ŷ| over the d = C*H*W elements of each sample
    xf, yf = x.flatten(1), y.flatten(1)
    manual = (xf / xf.norm(dim=1, keepdim=True) - yf / yf.norm(dim=1, keepdim=True)).abs().mean()
    assert l1_distance(x, y).item() == pytest.approx(manual.item(), rel=1e-6)


def test_distances_are_zero_for_the_same_direction():
    x = torch.tensor([[1.0, -2.0, 2.0]])
    for name in ("l1", "l2", "cos", "partial_l2"):
        assert DISTANCES[name][0](x, 7 * x).item() == pytest.approx(0.0, abs=1e-5), name


@pytest.mark.parametrize("name", ["l1", "l2", "cos", "partial_l2"])
def test_exploration_is_the_negative_distance(name):
    inherit, explore = DISTANCES[name]
    assert explore(XA, YA).item() == pytest.approx(-HAND[name][1], abs=1e-6)
    assert explore(XAB, YAB).item() == pytest.approx(-HAND[name][2], abs=1e-6)
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    y = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    assert explore(x, y).item() == pytest.approx(-inherit(x, y).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["l1", "l2", "cos", "partial_l2"])
def test_exploration_falls_as_x_moves_away_from_y(name):
    # y = [1, 0]; x at angle θ from it, θ = 0, π/8, ..., π/2 (beyond 3π/4 the
    # per-element l1 of two unit vectors in 2-D turns down again, so stay below).
    #   l1 = (1 - cos θ + sin θ)/2,  l2 = sqrt((2 - 2cos θ)/2),  cos = 1 - cos θ,
    #   partial_l2 = ((1 - cos θ)² + sin² θ)/2 = 1 - cos θ: all increasing in θ.
    _, explore = DISTANCES[name]
    y = torch.tensor([[1.0, 0.0]])
    angles = [k * math.pi / 8 for k in range(5)]
    values = [explore(torch.tensor([[math.cos(a), math.sin(a)]]), y).item() for a in angles]
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert values[0] == pytest.approx(0.0, abs=1e-5)
    expected_at_right_angle = {"l1": -1.0, "l2": -1.0, "cos": -1.0, "partial_l2": -1.0}[name]
    assert values[-1] == pytest.approx(expected_at_right_angle, abs=1e-5)


def test_exploration_gradient_pushes_away():
    # One gradient step on the exploration loss increases the distance.
    x = torch.tensor([[1.0, 0.2, -0.3]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0]])
    for name in ("l1", "l2", "cos"):
        inherit, explore = DISTANCES[name]
        xx = x.detach().clone().requires_grad_(True)
        explore(xx, y).backward()
        with torch.no_grad():
            moved = xx - 0.1 * xx.grad
        assert inherit(moved, y).item() > inherit(x.detach(), y).item(), name


def test_metric_lookup():
    assert set(DISTANCES) == {"l1", "l2", "cos", "partial_l2", "l1_cka"}
    assert inheritance_exploration("l2") == DISTANCES["l2"]
    # l1_cka: L1 inheritance, CKA exploration
    assert DISTANCES["l1_cka"][0] is l1_distance
    with pytest.raises(ValueError, match="'l3'"):
        inheritance_exploration("l3")


# ------------------------------------------------------------------ CKA


def _cka_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    """||Y_cᵀ X_c||_F² / (||X_cᵀ X_c||_F ||Y_cᵀ Y_c||_F) in float64, by the feature-space form."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    x, y = x - x.mean(0), y - y.mean(0)
    return ((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm())).item()


def test_cka_hand_worked():
    # One feature each, n = 3: linear CKA is the squared Pearson correlation.
    #   X = [1, 2, 3] -> X_c = [-1, 0, 1];  Y = [1, 0, 2] -> Y_c = [0, -1, 1]
    #   Y_cᵀX_c = 1;  X_cᵀX_c = 2;  Y_cᵀY_c = 2   -> CKA = 1² / (2 * 2) = 0.25
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [2.0]])
    assert linear_cka(x, y).item() == pytest.approx(0.25, abs=1e-6)
    # Uncorrelated: Y = [1, -2, 1] is already centred, X_c·Y_c = (-1)(1) + 0 + (1)(1) = 0 -> CKA = 0
    assert linear_cka(x, torch.tensor([[1.0], [-2.0], [1.0]])).item() == pytest.approx(0.0, abs=1e-7)
    # Two features, n = 3: rows e1, e2, 0; swapping the columns is an orthogonal
    # map of the features, which leaves the Gram matrix and so CKA = 1 unchanged
    x2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert linear_cka(x2, x2[:, [1, 0]]).item() == pytest.approx(1.0, abs=1e-6)


def test_cka_identity_and_invariances():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, generator=g)
    y = torch.randn(6, 3, generator=g)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-6)
    reference = _cka_reference(x, y)
    assert linear_cka(x, y).item() == pytest.approx(reference, rel=1e-5)
    # isotropic scale and translation
    assert linear_cka(3.5 * x + 2.0, 0.01 * y - 7.0).item() == pytest.approx(reference, rel=1e-4)
    # orthogonal map of the features
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    assert linear_cka(x @ q, y).item() == pytest.approx(reference, rel=1e-4)
    # symmetric, in [0, 1], accepts (n, C, H, W)
    assert linear_cka(y, x).item() == pytest.approx(reference, rel=1e-5)
    assert 0.0 <= reference <= 1.0
    xm = torch.randn(6, 2, 3, 3, generator=g)
    assert linear_cka(xm, xm.flatten(1)).item() == pytest.approx(1.0, abs=1e-6)


def test_cka_is_differentiable():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 4, generator=g, requires_grad=True)
    y = torch.randn(5, 4, generator=g)
    linear_cka(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_cka_errors():
    with pytest.raises(ValueError, match="4 and 3 samples"):
        linear_cka(torch.randn(4, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="1 sample"):
        linear_cka(torch.randn(1, 2), torch.randn(1, 2))
    with pytest.raises(ValueError, match="no variance"):
        linear_cka(torch.ones(3, 2), torch.randn(3, 2))


def test_l1_cka_exploration_is_cka_of_normalised_factors():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 2, 2, 2, generator=g)
    y = torch.randn(5, 2, 2, 2, generator=g)
    _, explore = DISTANCES["l1_cka"]
    xf, yf = x.flatten(1), y.flatten(1)
    expected = _cka_reference(xf / xf.norm(dim=1, keepdim=True), yf / yf.norm(dim=1, keepdim=True))
    assert explore(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert explore(x, y).item() >= 0
    assert explore(x, x).item() == pytest.approx(1.0, abs=1e-6)
