"""Probabilistic knowledge transfer against its formula, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from zoo_helpers import joint_step_leaves_teacher_alone

from kdlens.distill.base import METHODS
from kdlens.distill.methods.pkt import ProbabilisticKT, conditional_similarities
from kdlens.errors import UsageError

# Teacher t = [[1, 0], [0, 1]]: cosines [[1, 0], [0, 1]] -> kernel (c + 1)/2 = [[1, 1/2], [1/2, 1]]
#   -> rows over their sums: p = [[2/3, 1/3], [1/3, 2/3]]
# Student s = [[2, 0, 0], [5, 0, 0]] (3 features, same direction): cosines all 1 -> q = [[1/2, 1/2]] * 2
# Each row: 2/3 log(4/3) + 1/3 log(2/3) = 0.1917881 - 0.1351550 = 0.0566331; the mean over the 4
# entries is half that, 0.0283165; * 30000 = 849.50
ROW = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
T = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
S = torch.tensor([[2.0, 0.0, 0.0], [5.0, 0.0, 0.0]])


def test_registered_with_defaults():
    method = METHODS.build("pkt")
    assert isinstance(method, ProbabilisticKT)
    assert method.layers == ("conv",) and method.beta == 30000.0


def test_conditional_similarities_by_hand():
    assert torch.allclose(conditional_similarities(T), torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]]), atol=1e-6)
    assert torch.allclose(conditional_similarities(S), torch.full((2, 2), 0.5), atol=1e-6)
    # opposite vectors: cosine -1 -> kernel 0; a zero vector is left zero -> kernel 1/2 with everything
    p = conditional_similarities(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]))
    expected = torch.tensor([[1, 0, 0.5], [0, 1, 0.5], [0.5, 0.5, 0.5]])
    assert torch.allclose(p, expected / expected.sum(1, keepdim=True), atol=1e-6)


def test_hand_worked_loss():
    assert ROW / 2 == pytest.approx(0.0283165, abs=1e-7)
    assert ProbabilisticKT(layer="fc1")({"fc1": S}, {"fc1": T}).item() == pytest.approx(30000 * ROW / 2, rel=1e-5)
    assert ProbabilisticKT(layer="fc1", beta=1.0)({"fc1": S}, {"fc1": T}).item() == pytest.approx(ROW / 2, rel=1e-5)
    # as maps of other shapes: the samples are flattened
    loss = ProbabilisticKT(beta=1.0)({"conv": S.view(2, 3, 1, 1)}, {"conv": T.view(2, 1, 1, 2)})
    assert loss.item() == pytest.approx(ROW / 2, rel=1e-5)
    # the same similarity structure: zero
    assert ProbabilisticKT()({"conv": 7 * T}, {"conv": T}).item() == pytest.approx(0.0, abs=1e-6)


def test_no_gradient_reaches_the_teacher():
    f_s = torch.randn(4, 3, 2, 2, requires_grad=True)
    f_t = torch.randn(4, 6, 4, 4, requires_grad=True)
    ProbabilisticKT()({"conv": f_s}, {"conv": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0


def test_zero_student_sample_has_finite_gradients():
    f_s = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    loss = ProbabilisticKT(layer="fc1")({"fc1": f_s}, {"fc1": torch.randn(3, 4)})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f_s.grad).all()


@pytest.mark.parametrize("layer", ["conv", "fc1"])
def test_joint_step_leaves_teacher_alone(layer):
    assert joint_step_leaves_teacher_alone(ProbabilisticKT(layer=layer)) >= 0


def test_bad_options_and_batches():
    for bad in (-1.0, float("nan")):
        with pytest.raises(UsageError, match="beta = ") as error:
            ProbabilisticKT(beta=bad)
        assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="expected the same"):
        ProbabilisticKT()({"conv": torch.randn(3, 2)}, {"conv": torch.randn(4, 2)})
