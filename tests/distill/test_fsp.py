"""Flow of solution procedure (FSP): FSP matrices, the loss, the connectors and the sensing points, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlens.distill.base import METHODS
from kdlens.distill.methods.fsp import FlowOfSolutionProcedure, fsp_matrix
from kdlens.errors import UsageError
from kdlens.models import build_model

from zoo_helpers import joint_step_leaves_teacher_alone


def _map(rows, shape):
    return torch.tensor(rows, dtype=torch.float32).view(*shape)


def test_registered_with_defaults():
    method = METHODS.build("fsp")
    assert isinstance(method, FlowOfSolutionProcedure)
    assert method.sensing_points and not method.distils_logits and not method.includes_task_loss
    assert method.beta == 50.0
    assert method.layers == ()  # resolved in bind
    student = build_model("vgg11", 3, image_size=32, width=0.125)
    teacher = build_model("vgg11", 3, image_size=32, width=0.25)
    method.bind(student, teacher)
    assert method.layers == ("stage1", "stage2", "stage3", "stage4", "stage5")
    given = FlowOfSolutionProcedure(points=["stage2", "stage4"])
    given.bind(student, teacher)
    assert given.layers == ("stage2", "stage4")


# Student, two channels at point a (1 x 2 positions), one at point b:
#   a: ch0 = [1, 0], ch1 = [0, 1];   b: [2, 4]
#   G_S = [(1*2 + 0*4)/2, (0*2 + 1*4)/2] = [1, 2]          (2 x 1)
# Teacher: a: ch0 = [1, 1], ch1 = [0, 0];  b: [2, 2]
#   G_T = [(2 + 2)/2, 0] = [2, 0]
# mean of squared differences = ((1 - 2)^2 + (2 - 0)^2) / 2 = 2.5;  beta 50 -> 125
S_A, S_B = _map([[1, 0], [0, 1]], (1, 2, 1, 2)), _map([2, 4], (1, 1, 1, 2))
T_A, T_B = _map([[1, 1], [0, 0]], (1, 2, 1, 2)), _map([2, 2], (1, 1, 1, 2))


def test_fsp_matrix_by_hand():
    assert fsp_matrix(S_A, S_B).tolist() == [[[1.0], [2.0]]]
    assert fsp_matrix(T_A, T_B).tolist() == [[[2.0], [0.0]]]
    # the larger map is pooled to the smaller: [[1, 3], [5, 7]] -> 4; times [2] over one position = 8
    assert fsp_matrix(_map([1, 3, 5, 7], (1, 1, 2, 2)), _map([2], (1, 1, 1, 1))).tolist() == [[[8.0]]]
    assert fsp_matrix(_map([2], (1, 1, 1, 1)), _map([1, 3, 5, 7], (1, 1, 2, 2))).tolist() == [[[8.0]]]


def _method(points=("a", "b"), **options):
    return FlowOfSolutionProcedure(points=list(points), **options)


def test_loss_by_hand_equal_channels():
    method = _method()
    student, teacher = {"a": S_A, "b": S_B}, {"a": T_A, "b": T_B}
    method.setup(student, teacher)
    assert all(isinstance(c, nn.Identity) for c in method.connectors)  # no connector where channels agree
    assert method.trainable_parts() == [method]
    assert method(student, teacher).item() == pytest.approx(125.0, abs=1e-5)


def test_loss_by_hand_with_a_connector():
    # Student point a has ONE channel [1, 2]; the teacher has two there: a 1x1 connector (1 -> 2), fixed to
    # weights [[1], [2]], makes it ch0 = [1, 2], ch1 = [2, 4]. Point b: one channel each, no connector.
    #   student b = [1, 1]:  G_S = [(1 + 2)/2, (2 + 4)/2] = [1.5, 3]
    #   G_T = [2, 0] as above:  ((1.5 - 2)^2 + (3 - 0)^2) / 2 = (0.25 + 9) / 2 = 4.625
    s_a, s_b = _map([1, 2], (1, 1, 1, 2)), _map([1, 1], (1, 1, 1, 2))
    method = _method(beta=2.0)
    method.setup({"a": s_a, "b": s_b}, {"a": T_A, "b": T_B})
    conv = method.connectors[0]
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (1, 2) and conv.bias is None
    assert isinstance(method.connectors[1], nn.Identity)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    loss = method({"a": s_a, "b": s_b}, {"a": T_A, "b": T_B})
    assert loss.item() == pytest.approx(2 * 4.625, abs=1e-5)
    assert "connectors.0.weight" in method.state_dict()


def test_three_points_sum_two_pairs_and_spatial_sizes():
    # points a (2x2), b (1x1), c (1x1), one channel each, beta 1
    #   student: a = [[1, 3], [5, 7]] (pooled 4), b = [2], c = [3]:  G_ab = 8,  G_bc = 6
    #   teacher: a = 1 everywhere (pooled 1), b = [3], c = [1]:      G_ab = 3,  G_bc = 3
    #   loss = (8 - 3)^2 + (6 - 3)^2 = 25 + 9 = 34
    student = {"a": _map([1, 3, 5, 7], (1, 1, 2, 2)), "b": _map([2], (1, 1, 1, 1)), "c": _map([3], (1, 1, 1, 1))}
    teacher = {"a": torch.ones(1, 1, 2, 2), "b": _map([3], (1, 1, 1, 1)), "c": _map([1], (1, 1, 1, 1))}
    method = _method(points=("a", "b", "c"), beta=1.0)
    method.setup(student, teacher)
    assert method(student, teacher).item() == pytest.approx(34.0, abs=1e-5)
    # the student's and the teacher's maps at one point may differ in size: the FSP matrix does not
    teacher["a"] = torch.ones(1, 1, 4, 4)
    assert method(student, teacher).item() == pytest.approx(34.0, abs=1e-5)


def test_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(0)
    student = {"a": torch.randn(2, 3, 4, 4, generator=g, requires_grad=True),
               "b": torch.randn(2, 5, 2, 2, generator=g, requires_grad=True)}
    teacher = {"a": torch.randn(2, 6, 4, 4, generator=g, requires_grad=True),
               "b": torch.randn(2, 5, 2, 2, generator=g, requires_grad=True)}
    method = _method()
    method.setup(student, teacher)
    method(student, teacher).backward()
    assert teacher["a"].grad is None and teacher["b"].grad is None
    assert student["a"].grad is not None and student["b"].grad is not None
    assert method.connectors[0].weight.grad is not None


def test_joint_step_leaves_teacher_alone():
    assert math.isfinite(joint_step_leaves_teacher_alone(FlowOfSolutionProcedure()))


class _Staged(nn.Module):
    def __init__(self, stages):
        super().__init__()
        self.stage_names = tuple(f"stage{k}" for k in range(1, stages + 1))


@pytest.mark.parametrize("options, word", [
    (dict(beta=-1.0), "beta"), (dict(beta=float("nan")), "beta"), (dict(points=["stage1"]), "points"),
    (dict(points=["stage1", "stage1"]), "points"), (dict(points="stage1"), "points"),
])
def test_bad_options(options, word):
    with pytest.raises(UsageError, match=word) as info:
        METHODS.build("fsp", **options)
    assert "\n" not in str(info.value)


def test_bad_stage_counts():
    with pytest.raises(UsageError, match="stages") as info:
        FlowOfSolutionProcedure().bind(_Staged(3), _Staged(4))
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="at least two"):
        FlowOfSolutionProcedure().bind(_Staged(1), _Staged(1))
    with pytest.raises(RuntimeError, match="set up"):
        _method()({"a": S_A, "b": S_B}, {"a": T_A, "b": T_B})
