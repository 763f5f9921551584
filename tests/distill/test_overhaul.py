"""Overhaul distillation (OD): the margin, the partial L2 distance and the loss, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlens.distill.base import METHODS
from kdlens.distill.methods.overhaul import OverhaulDistillation, gaussian_negative_margin, partial_l2
from kdlens.models import build_model, pre_activation_norm


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ margin
#
# m = E[x | x < 0] for x ~ N(mu, s²) = mu - s * phi(mu/s) / Phi(-mu/s), and -3 s where Phi(-mu/s) < 0.001.
#   (0, 1):  -phi(0)/Phi(0) = -0.3989422804 / 0.5                        = -0.7978845608
#   (1, 2):  z = .5:  1 - 2 * 0.3520653268 / 0.3085375387                = -1.2821555407
#   (-1, 1): z = -1: -1 - 0.2419707245 / 0.8413447461                    = -1.2875999709
#   (3, 1):  Phi(-3) = 0.0013499 > 0.001: 3 - 0.0044318484 / 0.0013498980 = -0.2830986549
#   (3.2, 1): Phi(-3.2) = 0.000687 < 0.001                                -> -3
#   (6, 2):  the (3, 1) case scaled by 2                                   = -0.5661973099
#   (6.4, 2): Phi(-3.2) < 0.001                                           -> -6
#   a negative batch-norm weight is a negative std: |s| is used
MARGIN_CASES = [
    (0.0, 1.0, -0.7978845608),
    (1.0, 2.0, -1.2821555407),
    (-1.0, 1.0, -1.2875999709),
    (3.0, 1.0, -0.2830986549),
    (3.2, 1.0, -3.0),
    (6.0, 2.0, -0.5661973099),
    (6.4, 2.0, -6.0),
    (0.0, -1.0, -0.7978845608),
    (6.4, -2.0, -6.0),
    (1.0, -2.0, -1.2821555407),
]


def test_margin_hand_worked():
    mean = torch.tensor([c[0] for c in MARGIN_CASES])
    std = torch.tensor([c[1] for c in MARGIN_CASES])
    margin = gaussian_negative_margin(mean, std)
    assert margin.dtype == torch.float32 and margin.shape == mean.shape
    assert margin.tolist() == pytest.approx([c[2] for c in MARGIN_CASES], abs=1e-6)


def test_margin_formula_from_first_principles():
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    big_phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    assert phi(0.5) == pytest.approx(0.3520653268, abs=1e-10)
    assert big_phi(-0.5) == pytest.approx(0.3085375387, abs=1e-10)
    assert big_phi(-3.0) > 0.001 > big_phi(-3.2)
    mean, std = 0.7, 1.3
    expected = mean - std * phi(mean / std) / big_phi(-mean / std)
    assert gaussian_negative_margin(torch.tensor([mean]), torch.tensor([std])).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (1.0, 2.0), (-1.0, 1.0), (1.0, 0.8)])
def test_margin_monte_carlo(mean, std):
    # E[x | x < 0] by sampling; the standard error is < 0.005 with >= 5k negatives
    x = mean + std * _randn(400_000, seed=1).double()
    negative = x[x < 0]
    assert negative.numel() > 5000
    expected = gaussian_negative_margin(torch.tensor([mean]), torch.tensor([std])).item()
    assert negative.mean().item() == pytest.approx(expected, abs=0.02)


def test_margin_degenerate_std():
    # std 0 (clamped): a negative mean is its own conditional mean, a positive one gives ~0
    margin = gaussian_negative_margin(torch.tensor([-1.0, 1.0]), torch.tensor([0.0, 0.0]))
    assert torch.isfinite(margin).all()
    assert margin[0].item() == pytest.approx(-1.0, abs=1e-6)
    assert margin[1].item() == pytest.approx(0.0, abs=1e-6)


# -------------------------------------------------------------- partial L2
#
# One channel, 5 positions per sample (shape (2, 1, 1, 5)).
#   sample 1: student S = [-3, 0.5, 1, 3, -1],  target T = [-0.5, -0.5, 2, 2, 0]
#     pos 1: S = -3 <= T = -0.5 <= 0 -> ignored
#     pos 2: S = 0.5 > T            -> (0.5 + 0.5)² = 1
#     pos 3: T = 2 > 0              -> (1 - 2)²     = 1
#     pos 4: T = 2 > 0              -> (3 - 2)²     = 1
#     pos 5: S = -1 <= T = 0 <= 0   -> ignored (T = 0 counts as non-positive)
#     sum = 3
#   sample 2: S = [0]*5, T = [0.5]*5: all T > 0 -> 5 * 0.25 = 1.25
#   loss = (3 + 1.25) / 2 = 2.125   (sum over each sample, mean over the batch)
S_HAND = torch.tensor([[-3.0, 0.5, 1.0, 3.0, -1.0], [0.0] * 5]).view(2, 1, 1, 5)
T_HAND = torch.tensor([[-0.5, -0.5, 2.0, 2.0, 0.0], [0.5] * 5]).view(2, 1, 1, 5)


def test_partial_l2_hand_worked():
    assert partial_l2(S_HAND, T_HAND).item() == pytest.approx(2.125, abs=1e-6)
    # the plain squared distance would also count positions 1 and 5: + 2.5² + 1² per the first sample
    assert ((S_HAND - T_HAND).pow(2).flatten(1).sum(1).mean()).item() == pytest.approx((3 + 6.25 + 1 + 1.25) / 2)
    assert partial_l2(T_HAND, T_HAND).item() == 0.0


def _identity_connector(method: OverhaulDistillation) -> None:
    """Make r the identity: 1x1 conv weight I, batch norm in eval with mean 0, var 1, eps 0."""
    conv, bn = method.connector
    with torch.no_grad():
        conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels).view_as(conv.weight))
    bn.eps = 0.0
    bn.eval()


def test_od_forward_hand_worked():
    # Teacher pre-activations f_T and margin m = -0.5 give the target above:
    #   sample 1: max([-2, -1, 2, 2, 0], -0.5) = [-0.5, -0.5, 2, 2, 0]
    #   sample 2: max([0.5]*5, -0.5)          = [0.5]*5
    # With an identity connector the loss is weight * 2.125; weight 2 -> 4.25.
    # (Without the margin position 2 would give (0.5 + 1)² = 2.25: the clip matters.)
    f_t = torch.tensor([[-2.0, -1.0, 2.0, 2.0, 0.0], [0.5] * 5]).view(2, 1, 1, 5)
    method = OverhaulDistillation(layer="conv", weight=2.0)
    method.setup({"conv.pre": S_HAND}, {"conv.pre": f_t})
    _identity_connector(method)
    method.margin.fill_(-0.5)
    loss = method({"conv.pre": S_HAND}, {"conv.pre": f_t})
    assert loss.item() == pytest.approx(4.25, abs=1e-6)
    # the default weight is the authors' 1/1000
    assert OverhaulDistillation().weight == pytest.approx(1e-3)
    method.weight = 1e-3
    assert method({"conv.pre": S_HAND}, {"conv.pre": f_t}).item() == pytest.approx(0.002125, abs=1e-9)


def test_od_forward_matches_independent_computation():
    f_s, f_t = _randn(3, 6, 4, 4, seed=2), _randn(3, 5, 4, 4, seed=3)
    torch.manual_seed(0)
    method = OverhaulDistillation(layer="conv", weight=0.1)
    method.setup({"conv.pre": f_s}, {"conv.pre": f_t})
    method.margin.copy_(torch.tensor([-0.1, -0.5, -1.0, -3.0, -0.2]))
    for mode in (True, False):
        method.train(mode)
        loss = method({"conv.pre": f_s}, {"conv.pre": f_t})
        with torch.no_grad():
            s = method.connector(f_s)
        target = torch.maximum(f_t, method.margin.view(1, 5, 1, 1))
        keep = ~((s <= target) & (target <= 0))
        expected = 0.1 * ((s - target).pow(2) * keep).sum() / 3
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_od_layers_and_registration():
    method = METHODS.build("od", layer="conv")
    assert isinstance(method, OverhaulDistillation)
    assert method.layers == ("conv.pre",)
    with pytest.raises(ValueError, match="weight"):
        OverhaulDistillation(weight=-1.0)
    with pytest.raises(RuntimeError, match="set up"):
        method({"conv.pre": S_HAND}, {"conv.pre": T_HAND})


@pytest.mark.parametrize("c_s, c_t", [(6, 8), (16, 8), (8, 8)])
def test_od_connector_maps_student_to_teacher_channels(c_s, c_t):
    method = OverhaulDistillation()
    f_s, f_t = _randn(2, c_s, 4, 4, seed=4), _randn(2, c_t, 4, 4, seed=5)
    method.setup({"conv.pre": f_s}, {"conv.pre": f_t})
    conv, bn = method.connector
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
    assert (conv.in_channels, conv.out_channels) == (c_s, c_t)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == c_t
    assert method.connector(f_s).shape == (2, c_t, 4, 4)
    assert method.margin.shape == (c_t,)
    # the margin and the connector are checkpointed with the method
    assert {"margin", "connector.0.weight", "connector.1.running_mean"} <= set(method.state_dict())
    assert torch.isfinite(method({"conv.pre": f_s}, {"conv.pre": f_t}))


def test_od_spatial_mismatch_is_pooled():
    f_s, f_t = _randn(2, 4, 8, 8, seed=6), _randn(2, 4, 4, 4, seed=7)
    method = OverhaulDistillation(weight=1.0)
    method.setup({"conv.pre": f_s}, {"conv.pre": f_t})
    method.eval()
    loss = method({"conv.pre": f_s}, {"conv.pre": f_t})
    with torch.no_grad():
        s = F.adaptive_avg_pool2d(method.connector(f_s), (4, 4))
    target = torch.maximum(f_t, method.margin.view(1, -1, 1, 1))
    keep = ~((s <= target) & (target <= 0))
    assert loss.item() == pytest.approx((((s - target) ** 2) * keep).sum().item() / 2, rel=1e-5)


def test_od_teacher_gets_no_gradient():
    f_s = _randn(2, 6, 4, 4, seed=8).requires_grad_(True)
    f_t = _randn(2, 8, 4, 4, seed=9).requires_grad_(True)
    method = OverhaulDistillation(weight=1.0)
    method.setup({"conv.pre": f_s.detach()}, {"conv.pre": f_t.detach()})
    method.train()
    method({"conv.pre": f_s}, {"conv.pre": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.connector.parameters())
    # the connector trains with the student
    assert method.trainable_parts() == [method]


# ---------------------------------------------------------- fit_teacher


def _no_batches():
    # the batch-norm path must not need the training set (an empty one would raise if measured)
    return iter(())


def test_od_fit_teacher_uses_the_batch_norm_before_the_relu_vgg11():
    torch.manual_seed(0)
    teacher = build_model("vgg11", num_classes=4, image_size=32, width=0.125).eval()
    bn = pre_activation_norm(teacher.stages["conv"])
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 64
    # the BN is the module right before conv's final ReLU
    assert list(teacher.stages["conv"])[-2] is bn and isinstance(list(teacher.stages["conv"])[-1], nn.ReLU)
    with torch.no_grad():
        bn.bias.copy_(torch.linspace(-2.0, 4.0, 64))
        bn.weight.copy_(torch.linspace(0.5, 2.0, 64))
        # three channels worked by hand above: (0, 1), (3.2, 1) and (1, -2)
        bn.bias[:3] = torch.tensor([0.0, 3.2, 1.0])
        bn.weight[:3] = torch.tensor([1.0, 1.0, -2.0])
    x = _randn(2, 3, 32, 32, seed=10)
    f = teacher.features(x, ["conv.pre"])
    method = OverhaulDistillation(layer="conv")
    method.setup(f, f)
    method.fit_teacher(_no_batches, teacher)
    assert method.margin[:3].tolist() == pytest.approx([-0.7978845608, -3.0, -1.2821555407], abs=1e-6)
    expected = gaussian_negative_margin(bn.bias.detach(), bn.weight.detach())
    assert torch.allclose(method.margin, expected)


def test_od_fit_teacher_measures_statistics_without_batch_norm_alexnet():
    torch.manual_seed(0)
    teacher = build_model("alexnet", num_classes=4, image_size=32, width=0.125).eval()
    assert pre_activation_norm(teacher.stages["conv"]) is None
    images = [_randn(3, 3, 32, 32, seed=11), _randn(2, 3, 32, 32, seed=12)]
    with torch.no_grad():
        batches = [teacher.features(x, ["conv.pre"]) for x in images]
    c = batches[0]["conv.pre"].shape[1]
    assert batches[0]["conv.pre"].shape == (3, c, 8, 8)
    method = OverhaulDistillation(layer="conv")
    method.setup(batches[0], batches[0])
    method.fit_teacher(lambda: iter(batches), teacher)
    # independent: per channel mean and population std over every sample and position
    every = torch.cat([b["conv.pre"] for b in batches]).double().transpose(0, 1).flatten(1)  # (C, 5*64)
    mean, std = every.mean(1), every.std(1, unbiased=False)
    expected = gaussian_negative_margin(mean, std)
    assert torch.allclose(method.margin, expected, rtol=1e-5, atol=1e-6)
    assert (method.margin < 0).all()
    # an empty training set is an error, not a silent zero margin
    fresh = OverhaulDistillation(layer="conv")
    fresh.setup(batches[0], batches[0])
    with pytest.raises(ValueError, match="no teacher features"):
        fresh.fit_teacher(_no_batches, teacher)


def test_od_on_models_student_larger_than_teacher():
    torch.manual_seed(0)
    student = build_model("vgg11", num_classes=4, image_size=32, width=0.25)
    teacher = build_model("vgg11", num_classes=4, image_size=32, width=0.125).eval()
    x = _randn(4, 3, 32, 32, seed=13)
    method = OverhaulDistillation()
    with torch.no_grad():
        f_t = teacher.features(x, method.layers)
    _, f_s = student.forward_with_features(x, method.layers)
    assert f_s["conv.pre"].shape[1] == 128 and f_t["conv.pre"].shape[1] == 64
    method.setup(f_s, f_t)
    method.fit_teacher(_no_batches, teacher)
    assert method.connector[0].weight.shape == (64, 128, 1, 1)
    loss = method(f_s, f_t)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert student.stages["conv"][0].weight.grad is not None
