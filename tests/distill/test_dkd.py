"""Decoupled KD (DKD): TCKD and NCKD, worked by hand, and the warm-up the trainer reads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlens.distill.base import METHODS
from kdlens.distill.methods.dkd import DecoupledKD, decoupled_terms
from kdlens.errors import UsageError

from zoo_helpers import joint_step_leaves_teacher_alone


def test_registered_with_defaults():
    method = METHODS.build("dkd")
    assert isinstance(method, DecoupledKD)
    assert method.distils_logits and not method.includes_task_loss and not method.sensing_points
    assert method.layers == ("fc3",)
    assert (method.alpha, method.beta, method.temperature) == (1.0, 8.0, 4.0)
    assert DecoupledKD.weight_warmup_epochs == 20 and method.weight_warmup_epochs == 20
    # what the trainer multiplies the loss by (DistillationMethod.loss_scale): min(1, epoch / 20), epoch from 1
    for epoch, scale in [(1, 0.05), (10, 0.5), (20, 1.0), (240, 1.0)]:
        method.start_epoch(epoch, 240)
        assert method.loss_scale == pytest.approx(scale)


# Sample 1, label 0, T = 1:
#   student z = [0, 0, 0]          -> p = [1/3, 1/3, 1/3]:  b_S = [1/3, 2/3],  non-target p^_S = [1/2, 1/2]
#   teacher z = [log 4, log 3, 0]  -> p = [4, 3, 1]/8:      b_T = [1/2, 1/2],  non-target p^_T = [3/4, 1/4]
#   TCKD = 1/2 log(1/2 / (1/3)) + 1/2 log(1/2 / (2/3)) = 1/2 log 1.5 + 1/2 log 0.75 = 0.0588915
#   NCKD = 3/4 log(3/4 / (1/2)) + 1/4 log(1/4 / (1/2)) = 3/4 log 1.5 - 1/4 log 2   = 0.1308120
# Sample 2, label 2: student and teacher both z = [0, 0, 0] -> both terms 0.
# Batch means: TCKD = 0.0294457, NCKD = 0.0654060
# alpha 1, beta 8:  T^2 (TCKD + 8 NCKD) = 0.0294457 + 0.5232481 = 0.5526938
TCKD1 = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
NCKD1 = 0.75 * math.log(1.5) - 0.25 * math.log(2)
Z_S = torch.zeros(2, 3)
Z_T = torch.tensor([[math.log(4), math.log(3), 0.0], [0.0, 0.0, 0.0]])
Y = torch.tensor([0, 2])


def test_terms_by_hand():
    assert TCKD1 == pytest.approx(0.0588915, abs=1e-6) and NCKD1 == pytest.approx(0.1308120, abs=1e-6)
    tckd, nckd = decoupled_terms(Z_S, Z_T, Y, 1.0)
    assert tckd.item() == pytest.approx(TCKD1 / 2, abs=1e-6)
    assert nckd.item() == pytest.approx(NCKD1 / 2, abs=1e-6)


def test_loss_by_hand():
    loss = DecoupledKD(temperature=1.0)({"fc3": Z_S}, {"fc3": Z_T}, Y)
    assert loss.item() == pytest.approx((TCKD1 + 8 * NCKD1) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.5526938, abs=1e-6)
    # T = 2 on doubled logits gives the same distributions; the loss gains T^2 = 4
    loss = DecoupledKD(temperature=2.0, alpha=0.5, beta=3.0)({"fc3": 2 * Z_S}, {"fc3": 2 * Z_T}, Y)
    assert loss.item() == pytest.approx(4 * (0.5 * TCKD1 + 3 * NCKD1) / 2, abs=1e-6)


def test_kd_is_tckd_plus_weighted_nckd():
    # The paper's reformulation: KD = TCKD + (1 - p_t) NCKD, p_t the teacher's target probability. With one sample
    # and beta = 1 - p_t, DKD is Hinton's KL (times T^2). Here p_t = softmax([0.5, 2, -1] / 2)[1].
    z_s, z_t, y, t = torch.tensor([[1.0, -0.3, 0.7]]), torch.tensor([[0.5, 2.0, -1.0]]), torch.tensor([1]), 2.0
    p_t = F.softmax(z_t / t, dim=1)[0, 1].item()
    kd = t * t * F.kl_div(F.log_softmax(z_s / t, dim=1), F.softmax(z_t / t, dim=1), reduction="batchmean")
    dkd = DecoupledKD(alpha=1.0, beta=1 - p_t, temperature=t)({"fc3": z_s}, {"fc3": z_t}, y)
    assert dkd.item() == pytest.approx(kd.item(), rel=1e-5)


def test_finite_for_extreme_logits():
    z_s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], requires_grad=True)
    z_t = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, 0.0]])
    loss = DecoupledKD()({"fc3": z_s}, {"fc3": z_t}, torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z_s.grad).all()


def test_teacher_gets_no_gradient():
    z_s = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, -0.5]], requires_grad=True)
    z_t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    DecoupledKD()({"fc3": z_s}, {"fc3": z_t}, torch.tensor([2, 0])).backward()
    assert z_t.grad is None
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0


def test_joint_step_leaves_teacher_alone():
    assert math.isfinite(joint_step_leaves_teacher_alone(DecoupledKD()))


@pytest.mark.parametrize("options, word", [
    (dict(alpha=-1.0), "alpha"), (dict(beta=float("nan")), "beta"), (dict(temperature=0.0), "temperature"),
])
def test_bad_options(options, word):
    with pytest.raises(UsageError, match=word) as info:
        METHODS.build("dkd", **options)
    assert "\n" not in str(info.value)


def test_needs_targets_and_logits():
    with pytest.raises(UsageError, match="targets"):
        DecoupledKD()({"fc3": Z_S}, {"fc3": Z_T})
    with pytest.raises(UsageError, match="logits"):
        DecoupledKD()({"fc3": torch.zeros(2, 1)}, {"fc3": torch.zeros(2, 1)}, torch.tensor([0, 0]))
