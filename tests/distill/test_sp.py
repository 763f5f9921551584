"""Similarity-preserving KD against its formula, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from zoo_helpers import joint_step_leaves_teacher_alone

from kdlens.distill.base import METHODS
from kdlens.distill.methods.sp import SimilarityPreserving, similarity_matrix
from kdlens.errors import UsageError

R2, R5 = math.sqrt(2), math.sqrt(5)

# B = 2. Student Q_s = [[1, 0], [0, 1]]: G_s = I, rows already unit -> G~_s = I.
# Teacher Q_t = [[1, 0, 0], [1, 1, 0]] (3 features, the student has 2): G_t = [[1, 1], [1, 2]]
#   row 1 / sqrt 2 = [1/sqrt2, 1/sqrt2];  row 2 / sqrt 5 = [1/sqrt5, 2/sqrt5]
# G~_t - G~_s = [[1/sqrt2 - 1, 1/sqrt2], [1/sqrt5, 2/sqrt5 - 1]]
#   squares: 0.0857864 + 0.5 + 0.2 + 0.0111456 = 0.7969320; / B² = 0.1992330; * 3000 = 597.699
SQ = (1 / R2 - 1) ** 2 + 0.5 + 0.2 + (2 / R5 - 1) ** 2
Q_S = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
Q_T = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])


def test_registered_with_defaults():
    method = METHODS.build("sp")
    assert isinstance(method, SimilarityPreserving)
    assert method.layers == ("conv",) and method.gamma == 3000.0


def test_similarity_matrix_by_hand():
    expected = torch.tensor([[1 / R2, 1 / R2], [1 / R5, 2 / R5]])
    assert torch.allclose(similarity_matrix(Q_T), expected, atol=1e-7)
    assert torch.allclose(similarity_matrix(Q_S), torch.eye(2))
    # a zero sample stays a zero row (and column)
    assert torch.equal(similarity_matrix(torch.tensor([[0.0, 0.0], [1.0, 2.0]]))[0], torch.zeros(2))


def test_hand_worked_loss():
    assert SQ == pytest.approx(0.7969320, abs=1e-6)
    assert 3000 * SQ / 4 == pytest.approx(597.699, abs=1e-3)
    assert SimilarityPreserving(layer="fc1")({"fc1": Q_S}, {"fc1": Q_T}).item() == pytest.approx(
        3000 * SQ / 4, rel=1e-6)
    assert SimilarityPreserving(layer="fc1", gamma=1.0)({"fc1": Q_S}, {"fc1": Q_T}).item() == pytest.approx(
        SQ / 4, rel=1e-6)


def test_maps_are_flattened_whatever_their_shapes():
    # the same samples as maps: student (2, 2, 1, 1), teacher (2, 1, 1, 3)
    s, t = Q_S.view(2, 2, 1, 1), Q_T.view(2, 1, 1, 3)
    assert SimilarityPreserving(gamma=1.0)({"conv": s}, {"conv": t}).item() == pytest.approx(SQ / 4, rel=1e-6)
    # equal similarity structures give zero: the teacher's samples scaled by 3
    assert SimilarityPreserving()({"conv": t}, {"conv": 3 * t}).item() == pytest.approx(0.0, abs=1e-6)


def test_no_gradient_reaches_the_teacher():
    f_s = torch.randn(4, 3, 2, 2, requires_grad=True)
    f_t = torch.randn(4, 6, 4, 4, requires_grad=True)
    SimilarityPreserving()({"conv": f_s}, {"conv": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0


@pytest.mark.parametrize("layer", ["conv", "fc2"])
def test_joint_step_leaves_teacher_alone(layer):
    assert joint_step_leaves_teacher_alone(SimilarityPreserving(layer=layer)) >= 0


def test_bad_options_and_batches():
    for bad in (-1.0, float("nan")):
        with pytest.raises(UsageError, match="gamma = ") as error:
            SimilarityPreserving(gamma=bad)
        assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="expected the same"):
        SimilarityPreserving()({"conv": torch.randn(3, 2)}, {"conv": torch.randn(4, 2)})
