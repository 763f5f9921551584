"""Gradient control of IEP (Lee & Song, AAAI 2021, Eq. 20-21): clip-down by default, the printed form as an option."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlens.distill.iep.gradients import combine_gradients, loss_gradients, rescale_factor



def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _task_and_distillation():
    """Per parameter: a distillation gradient 10x the task's norm, and one 0.1x."""
    task = [_randn(3, 2, seed=1), _randn(4, seed=2)]
    big = [10 * task[0].norm() * _unit(_randn(3, 2, seed=3)), 10 * task[1].norm() * _unit(_randn(4, seed=4))]
    small = [0.1 * task[0].norm() * _unit(_randn(3, 2, seed=5)), 0.1 * task[1].norm() * _unit(_randn(4, seed=6))]
    return task, big, small


def _unit(x):
    return x / x.norm()


def _rescaled(task, z, **options):
    """clip(z) alone: the combined gradient minus the task's."""
    return [c - g for c, g in zip(combine_gradients(task, [z], **options), task)]


def test_clip_bounds_each_distillation_gradient_by_the_task_norm_per_parameter():
    task, big, small = _task_and_distillation()
    clipped = _rescaled(task, big)
    for c, z, g in zip(clipped, big, task):
        assert c.norm() <= g.norm() * (1 + 1e-12)
        torch.testing.assert_close(c.norm(), g.norm())  # clipped down to the task's norm
        torch.testing.assert_close(_unit(c), _unit(z))  # direction kept
    for c, z in zip(_rescaled(task, small), small):
        torch.testing.assert_close(c, z)  # small ones pass unchanged


def test_clip_with_global_norms():
    task, big, small = _task_and_distillation()
    task_norm = torch.stack([g.norm() for g in task]).norm()
    clipped = _rescaled(task, big, scope="global")
    torch.testing.assert_close(torch.stack([c.norm() for c in clipped]).norm(), task_norm)
    factor = clipped[0].norm() / big[0].norm()
    torch.testing.assert_close(clipped[1], factor * big[1])  # one factor for all parameters
    for c, z in zip(_rescaled(task, small, scope="global"), small):
        torch.testing.assert_close(c, z)


def test_literal_eq21_amplifies_small_gradients_and_keeps_large_ones():
    task, big, small = _task_and_distillation()
    for c, z, g in zip(_rescaled(task, small, mode="literal"), small, task):
        torch.testing.assert_close(c.norm(), g.norm())  # raised 10x to the task's norm
        torch.testing.assert_close(_unit(c), _unit(z))
    for c, z in zip(_rescaled(task, big, mode="literal"), big):
        torch.testing.assert_close(c, z)


def test_two_distillation_losses_are_rescaled_separately_and_summed():
    task, big, small = _task_and_distillation()
    combined = combine_gradients(task, [big, small])
    for c, g, z_big, z_small in zip(combined, task, big, small):
        torch.testing.assert_close(c, g + z_big * (g.norm() / z_big.norm()) + z_small)


def test_missing_and_zero_gradients():
    z = _randn(3, seed=7)
    task = [None, torch.zeros(3, dtype=torch.float64), None]
    distill = [z, torch.zeros(3, dtype=torch.float64), None]
    clipped = combine_gradients(task, [distill])
    torch.testing.assert_close(clipped[0], torch.zeros(3, dtype=torch.float64))  # no task gradient: clipped to 0
    assert torch.equal(clipped[1], torch.zeros(3, dtype=torch.float64))  # zero stays zero, no NaN
    assert clipped[2] is None
    literal = combine_gradients(task, [distill], mode="literal")
    torch.testing.assert_close(literal[0], z)
    assert torch.isfinite(literal[1]).all()
    assert float(rescale_factor(torch.tensor(2.0), torch.tensor(0.0))) == 1.0


def test_loss_gradients_combined():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = _randn(5, 3, seed=8), _randn(5, 2, seed=9)
    out = model(x)
    task_loss = (out - y).pow(2).mean()
    distill_losses = [100 * out.pow(2).mean(), 1e-3 * out.abs().mean(), torch.zeros(())]
    params = list(model.parameters())
    grads = combine_gradients(loss_gradients(task_loss, params), [loss_gradients(loss, params) for loss in distill_losses])
    assert loss_gradients(distill_losses[2], params) == [None, None]  # a constant reaches no parameter
    task = torch.autograd.grad(task_loss, params, retain_graph=True)
    distill = [torch.autograd.grad(loss, params, retain_graph=True) for loss in distill_losses[:2]]
    expected = combine_gradients(task, distill)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    big = torch.autograd.grad(distill_losses[0], params, retain_graph=True)
    assert all(b.norm() > t.norm() for b, t in zip(big, task))  # the first one was clipped indeed


def test_errors():
    task = [torch.zeros(2)]
    with pytest.raises(ValueError, match="mode = 'max': expected one of"):
        combine_gradients(task, [task], mode="max")
    with pytest.raises(ValueError, match="scope = 'layer': expected one of"):
        combine_gradients(task, [task], scope="layer")
    with pytest.raises(ValueError, match="cover 2 parameters: expected 1"):
        combine_gradients(task, [[torch.zeros(2), torch.zeros(2)]])
