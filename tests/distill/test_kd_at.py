"""Hinton KD and attention transfer against their formulas, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kdlens.distill.base import METHODS
from kdlens.distill.methods.attention import AttentionTransfer, attention_map
from kdlens.distill.methods.kd import HintonKD


def test_registered():
    assert "kd" in METHODS and "at" in METHODS
    assert isinstance(METHODS.build("kd"), HintonKD)
    assert isinstance(METHODS.build("at"), AttentionTransfer)


# ---------------------------------------------------------------- Hinton KD

# 2 samples, 3 classes, T = 2.
#   z_s = [[0,0,0], [2,0,0]]   z_t = [[2,0,0], [0,0,0]]   y = [0, 1]
# With T = 2, [2,0,0]/T = [1,0,0] -> p = [e, 1, 1]/(e+2); [0,0,0] -> u = [1,1,1]/3.
#   sample 1: KL(p || u) = log 3 + sum p log p = log 3 + e/(e+2) - log(e+2)
#   sample 2: KL(u || p) = -log 3 - (1/3) sum log p
#                        = -log 3 - (1/3)(1 - 3 log(e+2)) = -log 3 - 1/3 + log(e+2)
#   batchmean = (KL1 + KL2)/2 = (e/(e+2) - 1/3)/2 = (0.5761169 - 0.3333333)/2 = 0.1213918
#   times T^2 = 4:  0.4855671
# Cross-entropy (T = 1) on the student:
#   sample 1: log 3 = 1.0986123;  sample 2: log(e^2 + 2) - 0 = 2.2395447
#   mean = 1.6690785
# alpha = 0.9:  0.9 * 0.4855671 + 0.1 * 1.6690785 = 0.6039183
E = math.e
KD_SOFT = 4 * (E / (E + 2) - 1 / 3) / 2
KD_CE = (math.log(3) + math.log(E**2 + 2)) / 2
KD_Z_S = [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
KD_Z_T = [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
KD_Y = [0, 1]


def _kd(alpha, z_s=KD_Z_S, z_t=KD_Z_T, y=KD_Y, t=2.0, teacher_grad=False):
    method = HintonKD(layer="fc3", temperature=t, alpha=alpha)
    s = torch.tensor(z_s, requires_grad=True)
    te = torch.tensor(z_t, requires_grad=teacher_grad)
    targets = None if y is None else torch.tensor(y)
    return method({"fc3": s}, {"fc3": te}, targets), s, te


def test_kd_hand_worked_values():
    assert KD_SOFT == pytest.approx(0.4855671, abs=1e-6)
    assert KD_CE == pytest.approx(1.6690785, abs=1e-6)
    loss, _, _ = _kd(0.9)
    assert loss.item() == pytest.approx(0.6039183, abs=1e-5)
    assert loss.item() == pytest.approx(0.9 * KD_SOFT + 0.1 * KD_CE, rel=1e-5)
    assert _kd(1.0, y=None)[0].item() == pytest.approx(KD_SOFT, rel=1e-5)
    assert _kd(0.0)[0].item() == pytest.approx(KD_CE, rel=1e-5)


def test_kd_zero_kl_for_equal_logits():
    z = [[0.3, -1.2, 2.0], [1.0, 0.5, -0.5]]
    loss, _, _ = _kd(1.0, z_s=z, z_t=z, y=None, t=4.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # with alpha < 1 only the cross-entropy remains
    loss, s, _ = _kd(0.9, z_s=z, z_t=z, t=4.0)
    ce = torch.nn.functional.cross_entropy(s.detach(), torch.tensor(KD_Y))
    assert loss.item() == pytest.approx(0.1 * ce.item(), rel=1e-5)


def test_kd_teacher_gets_no_gradient():
    loss, s, te = _kd(0.9, teacher_grad=True)
    loss.backward()
    assert te.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_kd_bad_parameters_and_missing_targets():
    for t in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            HintonKD(temperature=t)
    for a in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            HintonKD(alpha=a)
    with pytest.raises(ValueError, match="targets"):
        _kd(0.9, y=None)


# ----------------------------------------------------- attention transfer

# Student 1x1x2x2 A_s = [[1,-1],[1,1]]: |A|^2 = [1,1,1,1] -> Q_s = [1/2]*4.
# Teacher 1x1x2x2 A_t = [[2,0],[0,0]]: |A|^2 = [4,0,0,0] -> Q_t = [1,0,0,0].
# (Q_s - Q_t)^2 = [1/4]*4, mean = 1/4, loss = 1000/2 * 1/4 = 125.
A_S = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]]]])
A_T = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])


def test_attention_map_by_hand():
    assert torch.allclose(attention_map(A_S), torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    assert torch.allclose(attention_map(A_T), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert attention_map(torch.randn(3, 5, 4, 6)).shape == (3, 24)


def test_at_hand_worked_value():
    loss = AttentionTransfer(layer="conv")({"conv": A_S}, {"conv": A_T})
    assert loss.item() == pytest.approx(125.0, rel=1e-6)
    assert AttentionTransfer(beta=2.0)({"conv": A_S}, {"conv": A_T}).item() == pytest.approx(0.25)
    assert AttentionTransfer()({"conv": A_S}, {"conv": A_S}).item() == pytest.approx(0.0, abs=1e-9)


def _block(values, block):
    """Place 2x2 `block` into the 2x2 grid of a 4x4 map, scaled by `values` per cell."""
    return torch.kron(torch.tensor(values), torch.tensor(block))


# Teacher 1x2x4x4 (2 channels, 4x4), pooled to 2x2 by averaging each 2x2 block.
#   channel 0: top-left block [[2,0],[0,2]] (mean 1), rest 0  -> pooled [[1,0],[0,0]]
#   channel 1: top-right block [[4,0],[0,4]] (mean 2), rest 0 -> pooled [[0,2],[0,0]]
# Pooling comes before squaring (squaring first would give 2 and 8, not 1 and 4).
#   mean_c pooled^2 = [1/2, 2, 0, 0] ∝ [1, 4, 0, 0] -> Q_t = [1, 4, 0, 0]/sqrt(17)
# Student as above, Q_s = [1/2]*4 (1 channel, 2x2).
#   sum (Q_s - Q_t)^2 = |Q_s|^2 + |Q_t|^2 - 2 Q_s.Q_t = 2 - 5/sqrt(17)
#   loss = 500 * (2 - 5/sqrt(17)) / 4 = 250 - 625/sqrt(17) = 98.41523...
AT_POOLED = 250 - 625 / math.sqrt(17)
T_BIG = torch.stack(
    [
        _block([[1.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 2.0]]),
        _block([[0.0, 1.0], [0.0, 0.0]], [[4.0, 0.0], [0.0, 4.0]]),
    ]
).unsqueeze(0)


def test_at_different_sizes_and_channels_pools_by_hand():
    assert T_BIG.shape == (1, 2, 4, 4)
    assert AT_POOLED == pytest.approx(98.41523, abs=1e-5)
    method = AttentionTransfer()
    loss = method({"conv": A_S}, {"conv": T_BIG})
    assert loss.item() == pytest.approx(AT_POOLED, rel=1e-5)
    # the larger map may be the student's: the loss is symmetric in the two maps
    swapped = method({"conv": T_BIG}, {"conv": A_S})
    assert swapped.item() == pytest.approx(AT_POOLED, rel=1e-5)
    # realistic shapes run: batch 3, student 8ch 8x8, teacher 32ch 16x16
    out = method({"conv": torch.randn(3, 8, 8, 8)}, {"conv": torch.randn(3, 32, 16, 16)})
    assert out.shape == () and torch.isfinite(out)


def test_at_teacher_gets_no_gradient():
    s = torch.randn(2, 4, 4, 4, requires_grad=True)
    t = torch.randn(2, 6, 8, 8, requires_grad=True)
    AttentionTransfer()({"conv": s}, {"conv": t}).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_at_bad_parameters():
    with pytest.raises(ValueError, match="beta"):
        AttentionTransfer(beta=-1.0)
    for p in (0, -2):
        with pytest.raises(ValueError, match="p = "):
            AttentionTransfer(p=p)
    with pytest.raises(ValueError, match="expected"):
        AttentionTransfer()({"conv": torch.randn(2, 3)}, {"conv": torch.randn(2, 3)})


def test_at_refuses_one_position_maps():
    from kdlens.distill import METHODS

    at = METHODS.build("at", layer="conv")
    with pytest.raises(ValueError, match="more than one position"):
        at({"conv": torch.randn(2, 4, 1, 1)}, {"conv": torch.randn(2, 4, 1, 1)})
