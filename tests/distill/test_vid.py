"""Variational information distillation against its formula, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from zoo_helpers import joint_step_leaves_teacher_alone

from kdlens.distill.base import METHODS
from kdlens.distill.methods.vid import VariationalInformationDistillation as VID
from kdlens.errors import UsageError


def test_registered_with_defaults():
    method = METHODS.build("vid")
    assert isinstance(method, VID)
    assert method.layers == ("conv",)
    assert (method.lam, method.init_pred_var, method.eps, method.mid_channels) == (1.0, 5.0, 1e-5, None)


def test_setup_builds_the_authors_regressor_and_initial_variance():
    method = VID()
    method.setup({"conv": torch.randn(2, 4, 2, 2)}, {"conv": torch.randn(2, 8, 2, 2)})
    convs = [m for m in method.regressor if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(4, 8), (8, 8), (8, 8)]
    assert all(m.kernel_size == (1, 1) and m.bias is None for m in convs)
    assert [type(m) for m in method.regressor] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
    # sigma² starts at init_pred_var = 5 in every channel: softplus(alpha) + eps = 5
    assert method.alpha.shape == (8,)
    assert torch.allclose(method.variance(), torch.full((8,), 5.0), atol=1e-5)
    assert torch.allclose(torch.log1p(torch.exp(method.alpha)) + 1e-5, torch.full((8,), 5.0), atol=1e-5)
    wide = VID(mid_channels=3)
    wide.setup({"conv": torch.randn(2, 4, 2, 2)}, {"conv": torch.randn(2, 8, 2, 2)})
    assert [m.out_channels for m in wide.regressor if isinstance(m, nn.Conv2d)] == [3, 3, 8]
    # the regressor and alpha train with the student
    trainable = {id(p) for part in method.trainable_parts() for p in part.parameters()}
    assert id(method.alpha) in trainable and {id(p) for p in method.regressor.parameters()} <= trainable


def _identity_regressor(method: VID) -> None:
    with torch.no_grad():
        for conv in method.regressor:
            if isinstance(conv, nn.Conv2d):
                conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels).view_as(conv.weight))


# Student (1, 2, 1, 2), non-negative, so the identity regressor (ReLUs between) returns it: mu = s.
#   s: channel 0 [1, 2], channel 1 [0, 3];  t: channel 0 [2, 2], channel 1 [2, 1]
#   t - mu: [1, 0], [2, -2]
# Variances set to 1 (channel 0) and 4 (channel 1): alpha = log(e^v - 1), softplus(alpha) = v.
#   channel 0: (log 1 + 1/1)/2 = 0.5,  (log 1 + 0)/2 = 0
#   channel 1: (log 4 + 4/4)/2 = (1.3862944 + 1)/2 = 1.1931472, twice
#   mean over the 4 elements: (0.5 + 0 + 2.3862944)/4 = 0.7215736
S = torch.tensor([[[[1.0, 2.0]], [[0.0, 3.0]]]])
T = torch.tensor([[[[2.0, 2.0]], [[2.0, 1.0]]]])
VID_HAND = (0.5 + 0.0 + 2 * (math.log(4) + 1) / 2) / 4


def _hand_method(**options) -> VID:
    method = VID(eps=1e-9, **options)
    method.setup({"conv": S}, {"conv": T})
    _identity_regressor(method)
    with torch.no_grad():
        method.alpha.copy_(torch.tensor([math.log(math.e - 1), math.log(math.e**4 - 1)]))
    return method


def test_hand_worked_loss():
    assert VID_HAND == pytest.approx(0.7215736, abs=1e-7)
    method = _hand_method()
    assert torch.allclose(method.variance(), torch.tensor([1.0, 4.0]), atol=1e-6)
    assert method({"conv": S}, {"conv": T}).item() == pytest.approx(VID_HAND, rel=1e-5)
    assert _hand_method(lam=3.0)({"conv": S}, {"conv": T}).item() == pytest.approx(3 * VID_HAND, rel=1e-5)


# Vectors are (B, C, 1, 1) maps: the same numbers as two samples of 2 features.
#   sample 1: s = [1, 0], t = [2, 2]: (0 + 1)/2, (log 4 + 4/4)/2;  sample 2: s = [2, 3], t = [2, 1]: 0, (log 4 + 1)/2
#   the same four terms -> the same mean
def test_hand_worked_vectors():
    s, t = torch.tensor([[1.0, 0.0], [2.0, 3.0]]), torch.tensor([[2.0, 2.0], [2.0, 1.0]])
    method = VID(layer="fc1", eps=1e-9)
    method.setup({"fc1": s}, {"fc1": t})
    _identity_regressor(method)
    with torch.no_grad():
        method.alpha.copy_(torch.tensor([math.log(math.e - 1), math.log(math.e**4 - 1)]))
    assert method({"fc1": s}, {"fc1": t}).item() == pytest.approx(VID_HAND, rel=1e-5)


def test_no_gradient_reaches_the_teacher():
    f_s = torch.randn(3, 4, 4, 4, requires_grad=True)
    f_t = torch.randn(3, 8, 2, 2, requires_grad=True)  # smaller: the student's map is pooled
    method = VID()
    method.setup({"conv": f_s.detach()}, {"conv": f_t.detach()})
    method({"conv": f_s}, {"conv": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert method.alpha.grad is not None


@pytest.mark.parametrize("layer", ["conv", "fc1"])
def test_joint_step_leaves_teacher_alone(layer):
    assert math.isfinite(joint_step_leaves_teacher_alone(VID(layer=layer)))


@pytest.mark.parametrize("options, match", [
    (dict(lam=-1.0), "lam = "), (dict(eps=0.0), "eps = "), (dict(init_pred_var=0.0), "init_pred_var = "),
    (dict(init_pred_var=1e-6), "init_pred_var = "), (dict(mid_channels=0), "mid_channels = "),
    (dict(mid_channels=2.5), "mid_channels = "),
])
def test_bad_options(options, match):
    with pytest.raises(UsageError, match=match) as error:
        VID(**options)
    assert "\n" not in str(error.value)


def test_not_set_up():
    with pytest.raises(RuntimeError, match="set up"):
        VID()({"conv": S}, {"conv": T})
