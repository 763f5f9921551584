"""Teacher-free KD (Tf-KD_reg): the virtual teacher and the loss, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kdlens.distill.base import METHODS
from kdlens.distill.methods.tf_kd import TeacherFreeKD, virtual_teacher_log_probs
from kdlens.errors import UsageError

from zoo_helpers import joint_step_leaves_teacher_alone


def test_registered_with_defaults():
    method = METHODS.build("tf_kd")
    assert isinstance(method, TeacherFreeKD)
    assert method.distils_logits and method.includes_task_loss and not method.sensing_points
    assert method.layers == ("fc3",)
    assert (method.temperature, method.alpha, method.a) == (20.0, 0.1, 0.99)


def test_virtual_teacher_by_hand():
    # K = 3, a = 0.5: p^d = [0.5, 0.25, 0.25] for label 0
    #   T = 1: p^d itself
    #   T = 2: ∝ sqrt(p^d) = [1/sqrt(2), 1/2, 1/2] -> [1, 1/sqrt(2), 1/sqrt(2)] / (1 + sqrt(2))
    y = torch.tensor([0, 2])
    p1 = virtual_teacher_log_probs(y, 3, 0.5, 1.0).exp()
    assert p1.tolist()[0] == pytest.approx([0.5, 0.25, 0.25], abs=1e-6)
    assert p1.tolist()[1] == pytest.approx([0.25, 0.25, 0.5], abs=1e-6)
    r2 = math.sqrt(2)
    p2 = virtual_teacher_log_probs(y, 3, 0.5, 2.0).exp()
    assert p2.tolist()[0] == pytest.approx([1 / (1 + r2), 1 / (r2 * (1 + r2)), 1 / (r2 * (1 + r2))], abs=1e-6)
    assert p2.tolist()[0] == pytest.approx([0.4142136, 0.2928932, 0.2928932], abs=1e-6)
    # the defaults, K = 100: 0.99^(1/20) against (0.01/99)^(1/20)
    p = virtual_teacher_log_probs(torch.tensor([0]), 100, 0.99, 20.0).exp()[0]
    top, rest = 0.99 ** 0.05, (0.01 / 99) ** 0.05
    assert p[0].item() == pytest.approx(top / (top + 99 * rest), rel=1e-5)
    assert p[0].item() == pytest.approx(0.0157, abs=1e-4)


# Student logits 0 (uniform 1/3) for 2 samples, labels [0, 2], K = 3, a = 0.5, T = 2, alpha = 0.1:
#   CE = log 3 = 1.0986123 per sample
#   KL(p^d_T || uniform) = sum p log(3 p), p = [q, r, r], q = 1/(1 + sqrt 2) = 0.4142136, r = (1 - q)/2 = 0.2928932
#     = 0.4142136 * log(1.2426407) + 2 * 0.2928932 * log(0.8786797) = 0.0899825 - 0.0757626 = 0.0142199
#   loss = 0.9 * 1.0986123 + 0.1 * 2^2 * 0.0142199 = 0.9887511 + 0.0056880 = 0.9944390
Q = 1 / (1 + math.sqrt(2))
R = (1 - Q) / 2
KL_HAND = Q * math.log(3 * Q) + 2 * R * math.log(3 * R)


def test_loss_by_hand():
    assert KL_HAND == pytest.approx(0.0142199, abs=1e-6)
    method = TeacherFreeKD(temperature=2.0, alpha=0.1, a=0.5)
    z = torch.zeros(2, 3)
    loss = method({"fc3": z}, {}, torch.tensor([0, 2]))
    assert loss.item() == pytest.approx(0.9 * math.log(3) + 0.1 * 4 * KL_HAND, abs=1e-6)
    assert loss.item() == pytest.approx(0.9944390, abs=1e-6)
    # alpha = 1: the KL term alone; alpha = 0: the CE alone
    assert TeacherFreeKD(temperature=2.0, alpha=1.0, a=0.5)({"fc3": z}, {}, torch.tensor([0, 2])).item() == \
        pytest.approx(4 * KL_HAND, abs=1e-6)
    assert TeacherFreeKD(temperature=2.0, alpha=0.0, a=0.5)({"fc3": z}, {}, torch.tensor([0, 2])).item() == \
        pytest.approx(math.log(3), abs=1e-6)
    # a student whose logits are the virtual teacher's, log p^d, has no KL left at any T
    matched = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    assert TeacherFreeKD(temperature=7.0, alpha=1.0, a=0.5)({"fc3": matched}, {}, torch.tensor([0])).item() == \
        pytest.approx(0.0, abs=1e-6)


def test_ignores_the_teacher_and_leaves_it_without_gradient():
    z_s = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, -0.5]], requires_grad=True)
    z_t = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]], requires_grad=True)
    y = torch.tensor([2, 0])
    method = TeacherFreeKD()
    with_teacher = method({"fc3": z_s}, {"fc3": z_t}, y)
    without = method({"fc3": z_s}, {}, y)
    assert with_teacher.item() == without.item()
    with_teacher.backward()
    assert z_t.grad is None
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0


def test_joint_step_leaves_teacher_alone():
    assert math.isfinite(joint_step_leaves_teacher_alone(TeacherFreeKD()))


@pytest.mark.parametrize("options, word", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=float("inf")), "temperature"),
    (dict(alpha=1.5), "alpha"), (dict(alpha=-0.1), "alpha"), (dict(a=1.0), "a = "), (dict(a=0.0), "a = "),
])
def test_bad_options(options, word):
    with pytest.raises(UsageError, match=word) as info:
        METHODS.build("tf_kd", **options)
    assert "\n" not in str(info.value)


def test_needs_targets_and_logits():
    method = TeacherFreeKD()
    with pytest.raises(UsageError, match="targets"):
        method({"fc3": torch.zeros(2, 3)}, {})
    with pytest.raises(UsageError, match="logits"):
        method({"fc3": torch.zeros(2, 3, 1, 1)}, {}, torch.tensor([0, 1]))


def test_the_split_for_a_gradient_balance_adds_up_to_the_loss():
    import torch.nn.functional as F

    from kdlens.distill.base import METHODS as REGISTRY

    method = REGISTRY.build("tf_kd")
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, 2])
    weight, soft = method.distillation_terms({"fc3": z}, {}, y)
    assert weight == pytest.approx(0.9)
    assert float(weight * F.cross_entropy(z, y) + soft) == pytest.approx(float(method({"fc3": z}, {}, y)), rel=1e-6)
