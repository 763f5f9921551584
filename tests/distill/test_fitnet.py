"""FitNets' hint loss against its formula, worked by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zoo_helpers import joint_step_leaves_teacher_alone

from kdlens.distill.base import METHODS
from kdlens.distill.methods.fitnet import FitNet
from kdlens.errors import UsageError


def _set_regressor(method: FitNet, weight, bias) -> None:
    conv = method.regressor
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight, dtype=torch.float32).view_as(conv.weight))
        conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def test_registered_with_defaults():
    method = METHODS.build("fitnet")
    assert isinstance(method, FitNet)
    assert method.layers == ("conv",) and method.beta == 100.0
    assert not method.includes_task_loss and not method.distils_logits and not method.sensing_points


# Student (1, 2, 1, 2): channel 0 = [1, 2], channel 1 = [3, 4].
# Regressor 2 -> 3 channels, W = [[1, 0], [0, 1], [0, 0]], bias 0: r(s) = [s0, s1, 0].
# Teacher (1, 3, 1, 2): [1, 0], [3, 6], [2, 0].
# r(s) - t = [0, 2], [0, -2], [-2, 0]; squares 0 4 0 4 4 0, sum 12 over 6 elements -> mean 2.
# beta = 100 -> 200;  beta = 0.5 -> 1.
S_MAP = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
T_MAP = torch.tensor([[[[1.0, 0.0]], [[3.0, 6.0]], [[2.0, 0.0]]]])


def test_hand_worked_map():
    assert S_MAP.shape == (1, 2, 1, 2) and T_MAP.shape == (1, 3, 1, 2)
    method = FitNet(layer="conv")
    method.setup({"conv": S_MAP}, {"conv": T_MAP})
    assert isinstance(method.regressor, nn.Conv2d) and method.regressor.kernel_size == (1, 1)
    assert (method.regressor.in_channels, method.regressor.out_channels) == (2, 3)
    _set_regressor(method, [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [0.0, 0.0, 0.0])
    assert method({"conv": S_MAP}, {"conv": T_MAP}).item() == pytest.approx(200.0, rel=1e-6)
    method.beta = 0.5
    assert method({"conv": S_MAP}, {"conv": T_MAP}).item() == pytest.approx(1.0, rel=1e-6)


# Vectors (fc layers): the regressor is a linear map. W = [[2, 0], [0, 1]], bias [0, 1].
#   s = [[1, 1], [0, 2]] -> r(s) = [[2, 2], [0, 3]];  t = [[2, 0], [1, 3]]
#   r(s) - t = [[0, 2], [-1, 0]]: squares 0 4 1 0, mean 5/4 -> beta 100 -> 125.
def test_hand_worked_vectors():
    s, t = torch.tensor([[1.0, 1.0], [0.0, 2.0]]), torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    method = FitNet(layer="fc1")
    method.setup({"fc1": s}, {"fc1": t})
    _set_regressor(method, [[2.0, 0.0], [0.0, 1.0]], [0.0, 1.0])
    assert method({"fc1": s}, {"fc1": t}).item() == pytest.approx(125.0, rel=1e-6)


# Spatial mismatch: the student's (1, 1, 2, 4) map [[1, 3, 0, 0], [1, 3, 4, 4]] is pooled to 1 x 2
# by averaging its 2 x 2 blocks: (1+3+1+3)/4 = 2, (0+0+4+4)/4 = 2.
# Teacher (1, 1, 1, 2) [2, 4]; identity regressor: diff [0, -2], mean square 2, beta 1 -> 2.
def test_hand_worked_spatial_pooling():
    s = torch.tensor([[[[1.0, 3.0, 0.0, 0.0], [1.0, 3.0, 4.0, 4.0]]]])
    t = torch.tensor([[[[2.0, 4.0]]]])
    method = FitNet(beta=1.0)
    method.setup({"conv": s}, {"conv": t})
    _set_regressor(method, [[1.0]], [0.0])
    assert method({"conv": s}, {"conv": t}).item() == pytest.approx(2.0, rel=1e-6)
    # and the teacher's map is the one pooled when it is the larger
    assert method({"conv": t}, {"conv": s}).item() == pytest.approx(2.0, rel=1e-6)


def test_regressor_trains_with_the_student():
    method = FitNet()
    method.setup({"conv": torch.randn(2, 4, 2, 2)}, {"conv": torch.randn(2, 8, 2, 2)})
    trainable = {id(p) for part in method.trainable_parts() for p in part.parameters()}
    assert {id(p) for p in method.regressor.parameters()} <= trainable
    assert {"regressor.weight", "regressor.bias"} <= set(method.state_dict())


def test_no_gradient_reaches_the_teacher():
    f_s = torch.randn(3, 4, 2, 2, requires_grad=True)
    f_t = torch.randn(3, 8, 2, 2, requires_grad=True)
    method = FitNet()
    method.setup({"conv": f_s.detach()}, {"conv": f_t.detach()})
    method({"conv": f_s}, {"conv": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert method.regressor.weight.grad is not None


@pytest.mark.parametrize("layer", ["conv", "fc1", "stage3"])
def test_joint_step_leaves_teacher_alone(layer):
    assert joint_step_leaves_teacher_alone(FitNet(layer=layer)) >= 0


def test_bad_options_and_not_set_up():
    for bad in (-1.0, float("nan")):
        with pytest.raises(UsageError, match="beta = ") as error:
            FitNet(beta=bad)
        assert "\n" not in str(error.value)
    with pytest.raises(RuntimeError, match="set up"):
        FitNet()({"conv": S_MAP}, {"conv": T_MAP})
