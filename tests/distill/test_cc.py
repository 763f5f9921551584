"""Correlation congruence (Gaussian-RBF kernel, Taylor order 2) against its formula, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from zoo_helpers import joint_step_leaves_teacher_alone

from kdlens.distill.base import METHODS
from kdlens.distill.methods.cc import CorrelationCongruence, taylor_rbf_correlation
from kdlens.errors import UsageError

R2 = math.sqrt(2)
E08 = math.exp(-0.8)  # exp(-2 gamma) for gamma = 0.4


def _k(c):
    """The P = 2 expansion for gamma = 0.4 at cosine c: e^-0.8 (1 + 0.8 c + 0.64 c²/2)."""
    return E08 * (1 + 0.8 * c + 0.32 * c * c)


def test_registered_with_defaults():
    method = METHODS.build("cc")
    assert isinstance(method, CorrelationCongruence)
    assert method.layers == ("conv",)
    assert (method.beta, method.gamma, method.order, method.feat_dim) == (0.02, 0.4, 2, 128)


def test_kernel_by_hand_and_against_the_exact_gaussian():
    # rows [1, 0] and [1, 1] (cosine 1/sqrt2 once normalised)
    e = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    k = taylor_rbf_correlation(e, gamma=0.4, order=2)
    expected = [[_k(1), _k(1 / R2)], [_k(1 / R2), _k(1)]]
    assert _k(1) == pytest.approx(2.12 * E08)
    assert torch.allclose(k, torch.tensor(expected), atol=1e-7)
    # order 0 is the constant e^-0.8; a long expansion is exp(-gamma ||f_i - f_j||²), ||.||² = 2 - sqrt 2
    assert torch.allclose(taylor_rbf_correlation(e, 0.4, 0), torch.full((2, 2), E08), atol=1e-7)
    exact = [[1.0, math.exp(-0.4 * (2 - R2))], [math.exp(-0.4 * (2 - R2)), 1.0]]
    assert torch.allclose(taylor_rbf_correlation(e, 0.4, 20), torch.tensor(exact), atol=1e-6)


def _set_embeddings(method: CorrelationCongruence) -> None:
    """Student embedding the identity on 2 features; teacher's keeps the first 2 of 3; no biases."""
    with torch.no_grad():
        method.embed_s.weight.copy_(torch.eye(2))
        method.embed_t.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        method.embed_s.bias.zero_()
        method.embed_t.bias.zero_()


# Student s = [[1, 0], [1, 1]] -> unit [1, 0], [1, 1]/sqrt2: cosines 1 (diagonal), 1/sqrt2 (off).
# Teacher t = [[2, 0, 5], [0, 3, 7]] -> embedded [2, 0], [0, 3] -> unit [1, 0], [0, 1]: cosines 1, 0.
# Diagonals agree (k(1)); off-diagonal k_t = k(0) = e^-0.8, k_s = k(1/sqrt2) = e^-0.8 (1 + 0.8/sqrt2 + 0.16)
#   difference e^-0.8 (0.8/sqrt2 + 0.16) = 0.4493290 * 0.7256854 = 0.3260712, squared 0.1063224, twice,
#   / B² = 4 -> 0.0531612; * beta 0.02 -> 0.0010632
CC_SQ = 2 * (E08 * (0.8 / R2 + 0.16)) ** 2 / 4
S = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
T = torch.tensor([[2.0, 0.0, 5.0], [0.0, 3.0, 7.0]])


def test_hand_worked_loss():
    assert CC_SQ == pytest.approx(0.0531612, abs=1e-6)
    method = CorrelationCongruence(layer="fc1", feat_dim=2)
    method.setup({"fc1": S}, {"fc1": T})
    assert isinstance(method.embed_s, nn.Linear) and method.embed_s.weight.shape == (2, 2)
    assert method.embed_t.weight.shape == (2, 3)
    _set_embeddings(method)
    assert method({"fc1": S}, {"fc1": T}).item() == pytest.approx(0.02 * CC_SQ, rel=1e-5)
    method.beta = 1.0
    assert method({"fc1": S}, {"fc1": T}).item() == pytest.approx(CC_SQ, rel=1e-5)


def test_maps_are_flattened_and_both_embeddings_train():
    f_s, f_t = torch.randn(4, 3, 2, 2), torch.randn(4, 6, 2, 2)
    method = CorrelationCongruence()
    method.setup({"conv": f_s}, {"conv": f_t})
    assert method.embed_s.weight.shape == (128, 12) and method.embed_t.weight.shape == (128, 24)
    trainable = {id(p) for part in method.trainable_parts() for p in part.parameters()}
    assert {id(p) for p in [*method.embed_s.parameters(), *method.embed_t.parameters()]} <= trainable


def test_no_gradient_reaches_the_teacher():
    f_s = torch.randn(4, 3, 2, 2, requires_grad=True)
    f_t = torch.randn(4, 6, 2, 2, requires_grad=True)
    method = CorrelationCongruence()
    method.setup({"conv": f_s.detach()}, {"conv": f_t.detach()})
    method({"conv": f_s}, {"conv": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert method.embed_t.weight.grad is not None  # the teacher's embedding does learn


@pytest.mark.parametrize("layer", ["conv", "fc1"])
def test_joint_step_leaves_teacher_alone(layer):
    assert joint_step_leaves_teacher_alone(CorrelationCongruence(layer=layer)) >= 0


@pytest.mark.parametrize("options, match", [
    (dict(beta=-1.0), "beta = "), (dict(gamma=0.0), "gamma = "), (dict(gamma=-0.4), "gamma = "),
    (dict(order=-1), "order = "), (dict(order=1.5), "order = "), (dict(order=True), "order = "),
    (dict(feat_dim=0), "feat_dim = "), (dict(feat_dim=12.0), "feat_dim = "),
])
def test_bad_options(options, match):
    with pytest.raises(UsageError, match=match) as error:
        CorrelationCongruence(**options)
    assert "\n" not in str(error.value)


def test_not_set_up_and_bad_batches():
    with pytest.raises(RuntimeError, match="set up"):
        CorrelationCongruence(layer="fc1")({"fc1": S}, {"fc1": T})
    method = CorrelationCongruence(layer="fc1")
    method.setup({"fc1": S}, {"fc1": T})
    with pytest.raises(UsageError, match="expected the same"):
        method({"fc1": S}, {"fc1": torch.cat([T, T])})
