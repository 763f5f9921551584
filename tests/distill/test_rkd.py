"""Relational KD (distance and angle losses) against its formulas, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from zoo_helpers import joint_step_leaves_teacher_alone

from kdlens.distill.base import METHODS
from kdlens.distill.methods.rkd import RelationalKD, angles, normalised_distances
from kdlens.errors import UsageError

R2 = math.sqrt(2)

# Teacher: a 3-4-5 right triangle, t1 = (0, 0), t2 = (3, 0), t3 = (0, 4).
#   distances d12 = 3, d13 = 4, d23 = 5; mean over the 6 ordered pairs i != j = 4
#   psi_t: 3/4, 1, 5/4
# Student: s1 = (0, 0), s2 = (1, 0), s3 = (0, 1): distances 1, 1, sqrt 2; mean (2 + sqrt 2)/3
#   psi_s: 3/(2 + sqrt 2) = 3 - 1.5 sqrt 2 (twice), 3 sqrt 2/(2 + sqrt 2) = 3 sqrt 2 - 3
# Differences (all below 1, so Huber = x²/2): a = 3 - 1.5 sqrt2 - 3/4, b = 3 - 1.5 sqrt2 - 1,
# c = 3 sqrt2 - 3 - 5/4; each pair twice in the 3 x 3 matrix, the diagonal 0:
#   L_D = 2 * (a² + b² + c²)/2 / 9 = (a² + b² + c²)/9
T_TRI = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
S_TRI = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
A, B, C = 3 - 1.5 * R2 - 0.75, 3 - 1.5 * R2 - 1, 3 * R2 - 3 - 1.25
L_D = (A * A + B * B + C * C) / 9
# Angles at each vertex (between the two other vertices):
#   teacher: at t1 90° -> cos 0; at t2 (-3,0).(-3,4)/(3*5) = 0.6; at t3 (0,-4).(3,-4)/(4*5) = 0.8
#   student: at s1 0; at s2 (-1,0).(-1,1)/sqrt2 = 1/sqrt2; at s3 likewise 1/sqrt2
# In the 3x3x3 tensor [i, j, k]: j = k != i gives cos 1 for both networks, j or k = i gives 0 for both,
# and each vertex's angle appears twice ((i, j, k) and (i, k, j)):
#   L_A = 2 * ((1/sqrt2 - 0.6)² + (1/sqrt2 - 0.8)²)/2 / 27
L_A = ((1 / R2 - 0.6) ** 2 + (1 / R2 - 0.8) ** 2) / 27
RKD_TRI = 25 * L_D + 50 * L_A  # = 0.12425...


def _close(actual, expected, tol=1e-6):
    assert torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=0), actual


def test_registered_with_defaults():
    method = METHODS.build("rkd")
    assert isinstance(method, RelationalKD)
    assert method.layers == ("conv",)
    assert (method.beta, method.lambda_d, method.lambda_a) == (1.0, 25.0, 50.0)


def test_psi_by_hand():
    _close(normalised_distances(T_TRI), [[0, 0.75, 1], [0.75, 0, 1.25], [1, 1.25, 0]])
    p = 3 - 1.5 * R2
    _close(normalised_distances(S_TRI), [[0, p, p], [p, 0, 3 * R2 - 3], [p, 3 * R2 - 3, 0]])
    psi_a = angles(T_TRI)
    assert psi_a.shape == (3, 3, 3)
    assert psi_a[0, 1, 2].item() == pytest.approx(0.0, abs=1e-7)
    assert psi_a[1, 0, 2].item() == pytest.approx(0.6, abs=1e-6)
    assert psi_a[1, 2, 0].item() == pytest.approx(0.6, abs=1e-6)
    assert psi_a[2, 0, 1].item() == pytest.approx(0.8, abs=1e-6)
    assert psi_a[0, 1, 1].item() == pytest.approx(1.0, abs=1e-6)  # the same direction
    assert psi_a[1, 1, 2].item() == 0.0 and psi_a[2, 0, 2].item() == 0.0  # a zero vector has no direction


def test_hand_worked_loss():
    assert RKD_TRI == pytest.approx(0.1242554, abs=1e-6)
    loss = RelationalKD(layer="fc1")({"fc1": S_TRI}, {"fc1": T_TRI})
    assert loss.item() == pytest.approx(RKD_TRI, rel=1e-5)
    # each term alone, and the outer weight
    assert RelationalKD(layer="fc1", lambda_a=0.0)({"fc1": S_TRI}, {"fc1": T_TRI}).item() == pytest.approx(
        25 * L_D, rel=1e-5)
    assert RelationalKD(layer="fc1", lambda_d=0.0, lambda_a=1.0)({"fc1": S_TRI}, {"fc1": T_TRI}).item() == (
        pytest.approx(L_A, rel=1e-5))
    assert RelationalKD(layer="fc1", beta=2.0)({"fc1": S_TRI}, {"fc1": T_TRI}).item() == pytest.approx(
        2 * RKD_TRI, rel=1e-5)


# The Huber loss's linear branch, and coincident samples. 1-D points:
#   teacher 0, 0, 10: distances (1,2) 0, (1,3) 10, (2,3) 10; mean 40/6 -> psi_t 0, 1.5, 1.5
#   student 0, 10, 10:                                                   psi_s 1.5, 1.5, 0
#   differences 1.5, 0, -1.5: Huber |x| - 1/2 = 1, 0, 1; twice each over 9 entries -> L_D = 4/9
#   loss (angles off) = 25 * 4/9 = 11.111...
def test_huber_linear_branch_and_coincident_samples():
    t = torch.tensor([[0.0], [0.0], [10.0]])
    s = torch.tensor([[0.0], [10.0], [10.0]])
    _close(normalised_distances(t), [[0, 0, 1.5], [0, 0, 1.5], [1.5, 1.5, 0]])
    loss = RelationalKD(layer="fc1", lambda_a=0.0)({"fc1": s}, {"fc1": t})
    assert loss.item() == pytest.approx(25 * 4 / 9, rel=1e-6)
    # with the angles too, coincident samples give a finite loss and finite gradients
    s = s.clone().requires_grad_(True)
    loss = RelationalKD(layer="fc1")({"fc1": s}, {"fc1": t})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def _repdistiller_rkd(f_s, f_t, w_d=25.0, w_a=50.0):
    """An independent, direct computation: every pairwise difference vector, as RepDistiller's RKDLoss."""
    def pdist(e):
        d = (e[:, None, :] - e[None, :, :]).norm(dim=2)
        return d

    s, t = f_s.flatten(1), f_t.flatten(1)
    t_d = pdist(t)
    t_d = t_d / t_d[t_d > 0].mean()
    d = pdist(s)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)
    td = F.normalize(t.unsqueeze(0) - t.unsqueeze(1), p=2, dim=2)
    sd = F.normalize(s.unsqueeze(0) - s.unsqueeze(1), p=2, dim=2)
    loss_a = F.smooth_l1_loss(torch.bmm(sd, sd.transpose(1, 2)), torch.bmm(td, td.transpose(1, 2)))
    return w_d * loss_d + w_a * loss_a


def test_matches_a_direct_computation_on_maps_of_different_sizes():
    g = torch.Generator().manual_seed(0)
    f_s = torch.relu(torch.randn(6, 4, 2, 2, generator=g)) + 3.0  # offset: the Gram path must stay accurate
    f_t = torch.relu(torch.randn(6, 8, 4, 4, generator=g))
    loss = RelationalKD()({"conv": f_s}, {"conv": f_t})
    assert loss.item() == pytest.approx(_repdistiller_rkd(f_s, f_t).item(), rel=1e-4)


def test_no_gradient_reaches_the_teacher():
    f_s = torch.randn(4, 3, 2, 2, requires_grad=True)
    f_t = torch.randn(4, 6, 2, 2, requires_grad=True)
    RelationalKD()({"conv": f_s}, {"conv": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0


@pytest.mark.parametrize("layer", ["conv", "fc1"])
def test_joint_step_leaves_teacher_alone(layer):
    assert joint_step_leaves_teacher_alone(RelationalKD(layer=layer)) >= 0


def test_bad_options_and_batches():
    for name in ("beta", "lambda_d", "lambda_a"):
        with pytest.raises(UsageError, match=f"{name} = ") as error:
            RelationalKD(**{name: -1.0})
        assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="at least 2") as error:
        RelationalKD()({"conv": torch.randn(1, 2, 2, 2)}, {"conv": torch.randn(1, 2, 2, 2)})
    assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="same batch"):
        RelationalKD()({"conv": torch.randn(3, 2, 2, 2)}, {"conv": torch.randn(4, 2, 2, 2)})
