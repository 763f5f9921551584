"""Gradient balance: a distillation loss capped so that its gradient on the
student is no larger than the task loss's, with the weight calibrated once.

A method's paper weight is set for the paper's features and data: AT's
β = 1000 for maps of 8x8 and more positions, KD's T² = 16 for a CIFAR-100
teacher whose soft targets are far from one-hot. On another layer size or a
more confident teacher the same weight can make the distillation gradient
many times the task gradient, and the student then does not fit its
training set (kdlens's first synthetic comparison: AT and IE-AT at 76 % and
74 % train error, KD at 34 %).

The rule (ours; it follows the idea of the IEP paper's gradient control,
Eq. 20-21, which clips every distillation gradient to the task gradient's
norm at every step, but decides once): during the first ``steps`` updates the
trainer computes the gradients of the task loss and of the (weighted)
distillation loss on the student's parameters separately and records the
ratio r = ||∇ L_distil|| / ||∇ L_task||. The distillation loss is multiplied
by

    c = min(1, kappa / mean(r))

(the running mean during the calibration, its final value afterwards). A
method whose gradient is already at most ``kappa`` times the task's keeps its
paper weight exactly (c = 1); a larger one is scaled down to kappa times the
task's on average over the calibration, and from then on the two losses
weigh against each other as the paper's weight makes them, only smaller by c.
Unlike IEP's clipping the cap does not vanish when the task loss reaches zero
on the training set, so KD keeps teaching from the soft targets after the
hard labels are fitted.

``c`` and the calibration's state are buffers, checkpointed with the student,
so a resumed run continues with the same weight.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from kdlens.errors import UsageError
from kdlens.train.distributed import mean_over_ranks


def gradients(loss: Tensor, params: Sequence[nn.Parameter]) -> list:
    """d loss / d params (None where the loss does not reach); the graph is kept for a second pass."""
    return list(torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True))


def norm(grads: Sequence) -> float:
    """The Euclidean norm of a list of gradients (None counts as zero)."""
    return math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None))


class GradientBalance(nn.Module):
    """The calibrated scale c of a distillation loss (see the module docstring)."""

    def __init__(self, steps: int = 20, kappa: float = 1.0) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UsageError(f"balance steps = {steps!r}: expected an integer >= 1 (updates to calibrate over)")
        if not (math.isfinite(kappa) and kappa > 0):
            raise UsageError(f"balance kappa = {kappa!r}: expected a finite number > 0 (the largest ratio of "
                             "distillation to task gradient norm)")
        self.steps, self.kappa = steps, float(kappa)
        self.register_buffer("ratio_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @property
    def calibrating(self) -> bool:
        return int(self.seen) < self.steps

    @property
    def scale(self) -> float:
        """c: 1 until a ratio is known, then min(1, kappa / mean ratio)."""
        if int(self.seen) == 0:
            return 1.0
        mean = float(self.ratio_sum) / int(self.seen)
        return 1.0 if mean <= self.kappa else self.kappa / mean

    def record(self, distillation_norm: float, task_norm: float) -> None:
        """One calibration update's gradient norms (ignored when the task's is 0
        or a norm is not finite). Data parallel: every process records the mean
        over the processes (each calls this, so the collective always matches),
        and all keep the same c."""
        valid = task_norm > 0 and math.isfinite(distillation_norm) and math.isfinite(task_norm)
        ratio = mean_over_ranks(distillation_norm / task_norm if valid else math.nan)
        if math.isfinite(ratio):
            self.ratio_sum += ratio
            self.seen += 1

    def backward(self, task: Tensor, distillation: Tensor, student: Sequence[nn.Parameter],
                 others: Sequence[nn.Parameter], task_weight: float = 1.0) -> Tensor:
        """Fill the ``.grad`` of ``student`` and ``others`` (a method's connectors)
        with the gradient of task_weight * task + c * distillation, calibrating c
        first while the calibration lasts (the ratio is taken against the
        unweighted task loss); returns that total, detached, for the log."""
        if not self.calibrating:
            total = task_weight * task + self.scale * distillation
            total.backward()
            return total.detach()
        raw_task_grads = gradients(task, student)
        task_grads = [None if g is None else task_weight * g for g in raw_task_grads]
        distillation_grads = gradients(distillation, [*student, *others])
        self.record(norm(distillation_grads[: len(student)]), norm(raw_task_grads))
        c = self.scale
        for p, g_task, g_distil in zip(student, task_grads, distillation_grads):
            parts = [g for g in (g_task, None if g_distil is None else c * g_distil) if g is not None]
            p.grad = sum(parts[1:], parts[0]) if parts else None
        for p, g in zip(others, distillation_grads[len(student):]):
            p.grad = None if g is None else c * g
        return (task_weight * task + c * distillation).detach()
