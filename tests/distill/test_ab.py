"""Activation boundaries (AB): the alternative loss and the method, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlens.distill.base import METHODS
from kdlens.distill.methods.ab import ActivationBoundaries, alternative_loss
from kdlens.errors import UsageError

from zoo_helpers import joint_step_leaves_teacher_alone


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_registered_with_defaults():
    method = METHODS.build("ab")
    assert isinstance(method, ActivationBoundaries)
    assert method.layers == ("conv.pre",)  # the pre-activation of the comparison's layer
    assert method.beta == 1.0 and method.margin == 1.0
    assert not method.distils_logits and not method.sensing_points and not method.includes_task_loss
    assert METHODS.build("ab", layer="fc1").layers == ("fc1.pre",)


# Six neurons, margin m = 1:
#   S = [-2, -0.5, 0.5, 2, 0.3, 1.5],  T = [-1, -1, 0, 1, 1, 1]
#   T <= 0 (off; T = 0 counts as off): (S + 1)^2 where S > -1
#     -2   -> 0 (already below -m)
#     -0.5 -> 0.5^2 = 0.25
#     0.5  -> 1.5^2 = 2.25
#   T > 0 (on): (S - 1)^2 where S <= 1
#     2    -> 0 (already above +m)
#     0.3  -> 0.7^2 = 0.49
#     1.5  -> 0
#   sum = 2.99, mean = 2.99 / 6 = 0.4983333
S_HAND = [-2.0, -0.5, 0.5, 2.0, 0.3, 1.5]
T_HAND = [-1.0, -1.0, 0.0, 1.0, 1.0, 1.0]


def test_alternative_loss_by_hand():
    per_neuron = alternative_loss(torch.tensor(S_HAND), torch.tensor(T_HAND), margin=1.0)
    assert per_neuron.tolist() == pytest.approx([0.0, 0.25, 2.25, 0.0, 0.49, 0.0], abs=1e-6)
    # m = 2: off: -2 -> 0 (not > -2), -0.5 -> 1.5^2, 0.5 -> 2.5^2; on: 2 -> 0^2, 0.3 -> 1.7^2, 1.5 -> 0.5^2
    per_neuron = alternative_loss(torch.tensor(S_HAND), torch.tensor(T_HAND), margin=2.0)
    assert per_neuron.tolist() == pytest.approx([0.0, 2.25, 6.25, 0.0, 2.89, 0.25], abs=1e-6)


def _identity_connector(method: ActivationBoundaries) -> None:
    """r = identity: 1x1 conv weight I, batch norm in eval with mean 0, var 1, eps 0, gamma 1, beta 0."""
    conv, bn = method.connector
    with torch.no_grad():
        conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels).view_as(conv.weight))
    bn.eps = 0.0
    bn.eval()


def test_forward_by_hand():
    s = torch.tensor(S_HAND).view(1, 1, 1, 6)
    t = torch.tensor(T_HAND).view(1, 1, 1, 6)
    method = ActivationBoundaries(beta=2.0)
    method.setup({"conv.pre": s}, {"conv.pre": t})
    _identity_connector(method)
    # beta * mean = 2 * 2.99 / 6 = 0.9966667
    assert method({"conv.pre": s}, {"conv.pre": t}).item() == pytest.approx(2 * 2.99 / 6, abs=1e-6)
    method.margin = 2.0  # (2.25 + 6.25 + 2.89 + 0.25) / 6 * 2 = 11.64 / 3 = 3.88
    assert method({"conv.pre": s}, {"conv.pre": t}).item() == pytest.approx(3.88, abs=1e-6)
    # the teacher's value does not matter, only its sign
    method.margin = 1.0
    assert method({"conv.pre": s}, {"conv.pre": 7 * t}).item() == pytest.approx(2 * 2.99 / 6, abs=1e-6)


def test_loss_starts_on_the_scale_of_cross_entropy():
    # In training mode the connector's batch norm standardises each channel, so each neuron starts at
    # E[(z + 1)^2; z > -1] = (1 + 1) Phi(1) + phi(1) for z ~ N(0, 1), whatever the teacher's signs.
    phi1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    big_phi1 = 0.5 * math.erfc(-1 / math.sqrt(2))
    expected = 2 * big_phi1 + phi1
    assert expected == pytest.approx(1.9246602, abs=1e-6)
    f_s, f_t = 3 + 5 * _randn(64, 6, 16, 16, seed=1), _randn(64, 12, 16, 16, seed=2)
    torch.manual_seed(0)
    method = ActivationBoundaries()
    method.setup({"conv.pre": f_s}, {"conv.pre": f_t})
    loss = method({"conv.pre": f_s}, {"conv.pre": f_t}).item()
    assert loss == pytest.approx(expected, abs=0.1)


def test_connector_and_spatial_pooling():
    f_s, f_t = _randn(2, 6, 8, 8, seed=3), _randn(2, 4, 4, 4, seed=4)
    method = ActivationBoundaries(beta=1.0)
    method.setup({"conv.pre": f_s}, {"conv.pre": f_t})
    conv, bn = method.connector
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (6, 4, (1, 1), None)
    assert bn.num_features == 4
    assert {"connector.0.weight", "connector.1.running_mean"} <= set(method.state_dict())
    method.eval()
    loss = method({"conv.pre": f_s}, {"conv.pre": f_t})
    with torch.no_grad():
        s = F.adaptive_avg_pool2d(method.connector(f_s), (4, 4))  # after the connector, to the smaller size
    off = ((f_t <= 0) & (s > -1)).float() * (s + 1) ** 2
    on = ((f_t > 0) & (s <= 1)).float() * (s - 1) ** 2
    assert loss.item() == pytest.approx((off + on).mean().item(), rel=1e-5)
    # a (B, C) feature (fc1.pre) is a 1x1 map
    v_s, v_t = _randn(3, 5, seed=5), _randn(3, 7, seed=6)
    vec = ActivationBoundaries(layer="fc1")
    vec.setup({"fc1.pre": v_s}, {"fc1.pre": v_t})
    assert torch.isfinite(vec({"fc1.pre": v_s}, {"fc1.pre": v_t}))


def test_teacher_gets_no_gradient():
    f_s = _randn(2, 6, 4, 4, seed=7).requires_grad_(True)
    f_t = _randn(2, 8, 4, 4, seed=8).requires_grad_(True)
    method = ActivationBoundaries()
    method.setup({"conv.pre": f_s.detach()}, {"conv.pre": f_t.detach()})
    method({"conv.pre": f_s}, {"conv.pre": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.connector.parameters())
    assert method.trainable_parts() == [method]


def test_joint_step_leaves_teacher_alone():
    assert math.isfinite(joint_step_leaves_teacher_alone(ActivationBoundaries()))


@pytest.mark.parametrize("options, word", [
    (dict(beta=-1.0), "beta"), (dict(beta=float("nan")), "beta"), (dict(margin=0.0), "margin"),
    (dict(margin=float("inf")), "margin"), (dict(layer="conv.pre"), "layer"),
])
def test_bad_options(options, word):
    with pytest.raises(UsageError, match=word) as info:
        METHODS.build("ab", **options)
    assert "\n" not in str(info.value)


def test_not_set_up():
    with pytest.raises(RuntimeError, match="set up"):
        ActivationBoundaries()({"conv.pre": torch.zeros(1, 1, 1, 1)}, {"conv.pre": torch.zeros(1, 1, 1, 1)})
