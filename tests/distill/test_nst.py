"""Neuron selectivity transfer (polynomial-kernel MMD) against its formula, worked by hand."""

from __future__ import annotations

import pytest
import torch
from zoo_helpers import joint_step_leaves_teacher_alone

from kdlens.distill.base import METHODS
from kdlens.distill.methods.nst import NeuronSelectivityTransfer as NST
from kdlens.errors import UsageError

# One image, maps of 1 x 2 positions. Teacher channels t1 = [1, 0], t2 = [0, 1] (already unit).
# Student channels s1 = s2 = [3, 4] -> unit [0.6, 0.8].
#   mean k(t, t') over 4 pairs: (1² + 0² + 0² + 1²)/4 = 0.5
#   mean k(s, s'): every pair (0.36 + 0.64)² = 1 -> 1
#   mean k(s, t): (s.t1)² = 0.36, (s.t2)² = 0.64 (for each of the two s) -> 0.5
#   MMD² = 0.5 + 1 - 2 * 0.5 = 0.5;  * lambda 50 = 25
# A second image: teacher the same, student s1 = [1, 0], s2 = [0, 5] -> unit [1, 0], [0, 1]:
#   the same set as the teacher's -> MMD² = 0.5 + 0.5 - 2 * 0.5 = 0
# Batch mean 0.25 -> 12.5
T = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]] * 2)
S = torch.tensor([[[[3.0, 4.0]], [[3.0, 4.0]]], [[[1.0, 0.0]], [[0.0, 5.0]]]])


def test_registered_with_defaults():
    method = METHODS.build("nst")
    assert isinstance(method, NST)
    assert method.layers == ("conv",) and method.lam == 50.0


def test_hand_worked_loss():
    assert T.shape == S.shape == (2, 2, 1, 2)
    assert NST()({"conv": S[:1]}, {"conv": T[:1]}).item() == pytest.approx(25.0, rel=1e-6)
    assert NST()({"conv": S[1:]}, {"conv": T[1:]}).item() == pytest.approx(0.0, abs=1e-6)
    assert NST()({"conv": S}, {"conv": T}).item() == pytest.approx(12.5, rel=1e-6)
    assert NST(lam=2.0)({"conv": S}, {"conv": T}).item() == pytest.approx(0.5, rel=1e-6)


# Different channel counts and sizes: the student's (1, 1, 2, 4) map [[3, 3, 4, 4], [3, 3, 4, 4]] is
# pooled to 1 x 2 by its 2 x 2 blocks: [3, 4], the first image's student pattern above, one channel.
#   mean k(s, s) = 1, mean k(s, t) = 0.5, mean k(t, t) = 0.5 -> MMD² = 0.5 -> 25
def test_hand_worked_pooling_and_channel_counts():
    s = torch.tensor([[[[3.0, 3.0, 4.0, 4.0], [3.0, 3.0, 4.0, 4.0]]]])
    assert NST()({"conv": s}, {"conv": T[:1]}).item() == pytest.approx(25.0, rel=1e-6)


def test_no_gradient_reaches_the_teacher():
    f_s = torch.randn(3, 4, 4, 4, requires_grad=True)
    f_t = torch.randn(3, 8, 2, 2, requires_grad=True)
    NST()({"conv": f_s}, {"conv": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0


@pytest.mark.parametrize("layer", ["conv", "stage3"])
def test_joint_step_leaves_teacher_alone(layer):
    assert joint_step_leaves_teacher_alone(NST(layer=layer)) >= 0


def test_bad_options_and_features():
    for bad in (-1.0, float("nan")):
        with pytest.raises(UsageError, match="lam = ") as error:
            NST(lam=bad)
        assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="feature maps") as error:
        NST(layer="fc1")({"fc1": torch.randn(2, 4)}, {"fc1": torch.randn(2, 8)})
    assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="more than one position"):
        NST()({"conv": torch.randn(2, 4, 1, 1)}, {"conv": torch.randn(2, 8, 1, 1)})
