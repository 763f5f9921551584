"""The gradient balance, the loss warm-up and IE-KD's late exploration, on cases worked by hand."""

import pytest
import torch
from torch import nn

from kdlens.distill.base import METHODS
from kdlens.errors import UsageError
from kdlens.train.balance import GradientBalance


def _losses(a: float, b: float):
    """One parameter w = (1, 1): task = a * sum(w), distillation = b * sum(w), so
    ||grad task|| = |a| sqrt(2) and ||grad distillation|| = |b| sqrt(2): their ratio is |b / a|."""
    w = nn.Parameter(torch.ones(2))
    return w, a * w.sum(), b * w.sum()


def test_a_gradient_four_times_the_task_is_scaled_to_it():
    balance = GradientBalance(steps=2, kappa=1.0)
    w, task, distillation = _losses(1.0, 4.0)
    total = balance.backward(task, distillation, [w], [])
    # ratio 4 -> c = 1 / 4; grad = 1 + 4 / 4 = 2 per element; the logged loss is task + c * distillation = 2 + 2
    assert balance.scale == pytest.approx(0.25)
    assert torch.allclose(w.grad, torch.full((2,), 2.0))
    assert float(total) == pytest.approx(4.0)
    w, task, distillation = _losses(1.0, 2.0)  # ratio 2: the mean of 4 and 2 is 3, c = 1 / 3
    balance.backward(task, distillation, [w], [])
    assert balance.scale == pytest.approx(1 / 3) and not balance.calibrating
    w, task, distillation = _losses(1.0, 100.0)  # calibrated: the ratio is no longer recorded
    balance.backward(task, distillation, [w], [])
    assert balance.scale == pytest.approx(1 / 3)
    assert torch.allclose(w.grad, torch.full((2,), 1 + 100 / 3))


def test_a_gradient_below_kappa_keeps_the_paper_weight():
    balance = GradientBalance(steps=1, kappa=1.0)
    w, task, distillation = _losses(2.0, 1.0)  # ratio 0.5 <= 1
    balance.backward(task, distillation, [w], [])
    assert balance.scale == 1.0
    assert torch.allclose(w.grad, torch.full((2,), 3.0))


def test_task_weight_scales_the_task_term_but_not_the_ratio():
    # KD: 0.1 * CE + c * soft; the ratio is taken against the CE's own gradient
    balance = GradientBalance(steps=1, kappa=1.0)
    w, task, distillation = _losses(1.0, 4.0)
    balance.backward(task, distillation, [w], [], task_weight=0.1)
    assert balance.scale == pytest.approx(0.25)
    assert torch.allclose(w.grad, torch.full((2,), 0.1 + 1.0))


def test_connectors_get_the_scaled_distillation_gradient_and_the_state_is_checkpointed():
    balance = GradientBalance(steps=1)
    w = nn.Parameter(torch.ones(2))
    connector = nn.Parameter(torch.ones(1))
    balance.backward(w.sum(), 4.0 * w.sum() + 8.0 * connector.sum(), [w], [connector])
    assert torch.allclose(connector.grad, torch.tensor([8.0 * 0.25]))
    restored = GradientBalance(steps=1)
    restored.load_state_dict(balance.state_dict())
    assert restored.scale == pytest.approx(0.25) and not restored.calibrating


def test_bad_balance_settings_are_one_line_errors():
    for kwargs in ({"steps": 0}, {"steps": 2.5}, {"kappa": 0.0}, {"kappa": float("nan")}):
        with pytest.raises(UsageError):
            GradientBalance(**kwargs)


def test_loss_warmup_ramps_linearly_by_epoch():
    method = METHODS.build("at", layer="conv")
    assert method.loss_scale == 1.0  # no warm-up by default
    method.weight_warmup_epochs = 4
    scales = []
    for epoch in range(1, 7):
        method.start_epoch(epoch, 6)
        scales.append(method.loss_scale)
    assert scales == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_ie_kd_explores_only_after_its_start_share():
    method = METHODS.build("ie_ft", layer="conv", exploration_start=0.25)
    assert method.exploring  # before the trainer says which epoch: on
    on = []
    for epoch in range(1, 9):  # 8 epochs: (epoch - 1) >= 2 from the 3rd epoch on
        method.start_epoch(epoch, 8)
        on.append(method.exploring)
    assert on == [False, False, True, True, True, True, True, True]
    with pytest.raises(UsageError):
        METHODS.build("ie_ft", layer="conv", exploration_start=1.0)


def test_a_zero_task_weight_still_calibrates_against_the_task_gradient():
    # KD with alpha = 1: no cross-entropy in the loss, but the cap is still taken against it
    balance = GradientBalance(steps=1)
    w, task, distillation = _losses(1.0, 4.0)
    balance.backward(task, distillation, [w], [], task_weight=0.0)
    assert not balance.calibrating and balance.scale == pytest.approx(0.25)
    assert torch.allclose(w.grad, torch.full((2,), 1.0))  # 0 * 1 + 4 / 4
