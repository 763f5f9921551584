"""Overhaul distillation (OD), the loss of

    Heo, Kim, Yun, Park, Kwak, Choi. "A Comprehensive Overhaul of Feature
    Distillation." ICCV 2019.

The position is *before* the ReLU (``"<layer>.pre"``) in both networks. The
student's pre-activation feature goes through a connector r (1x1 conv + batch
norm, trained with the student) to the teacher's channel count. The teacher's
pre-ReLU feature is clipped from below by a per-channel margin m, the
expectation of its negative part: with the batch norm before the ReLU taken as
N(mu = beta, sigma = gamma) (the paper's eq. 4, the authors' code),

    m = E[x | x < 0] = mu - sigma * phi(mu / sigma) / Phi(-mu / sigma)

(and -3 sigma where Phi(-mu/sigma) < 0.001, as their code). Where the layer has
no batch norm before its ReLU, mu and sigma are measured on the teacher's
pre-activations over the training set instead. The partial L2 distance is

    d_p(T, S) = sum_i (T_i - S_i)^2  except where S_i <= T_i <= 0,
    T = max(f_T, m),  S = r(f_S),
    L = weight * d_p / B,

weight = 1/1000 as the authors' CIFAR code (``loss_distill.sum() / batch_size
/ 1000``); their several positions are one here, the method's layer. Spatial
sizes that differ are pooled to the smaller.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod, TeacherBatches, as_map, connected_maps
from kdlens.errors import UsageError
from kdlens.models.base import PRE_ACTIVATION, pre_activation_norm


def gaussian_negative_margin(mean: Tensor, std: Tensor) -> Tensor:
    """E[x | x < 0] of N(mean, std²) per channel; -3 std where P(x < 0) < 0.001."""
    mean, std = mean.double(), std.double().abs().clamp_min(1e-8)
    z = mean / std
    below = 0.5 * torch.erfc(z / math.sqrt(2))  # Phi(-z)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    margin = mean - std * density / below.clamp_min(1e-300)
    return torch.where(below > 0.001, margin, -3 * std).float()


def partial_l2(student: Tensor, target: Tensor) -> Tensor:
    """sum of (target - student)^2 over positions other than student <= target <= 0, per sample mean."""
    keep = ((student > target) | (target > 0)).to(student.dtype)
    return ((student - target).pow(2) * keep).flatten(1).sum(1).mean()


@METHODS.register("od")
class OverhaulDistillation(DistillationMethod):
    def __init__(self, layer: str = "conv", weight: float = 1e-3) -> None:
        super().__init__()
        if not weight >= 0:
            raise UsageError(f"weight = {weight!r}: expected >= 0")
        self.layer = layer
        self.layers = (layer + PRE_ACTIVATION,)
        self.weight = float(weight)
        self.connector: Optional[nn.Sequential] = None

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        (key,) = self.layers
        c_s, c_t = as_map(student[key]).shape[1], as_map(teacher[key]).shape[1]
        conv = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # the authors' init
        self.connector = nn.Sequential(conv, nn.BatchNorm2d(c_t))
        self.register_buffer("margin", torch.zeros(c_t))

    def fit_teacher(self, batches: TeacherBatches, teacher: nn.Module) -> None:
        norm = pre_activation_norm(teacher.stages[self.layer]) if hasattr(teacher, "stages") else None
        if norm is not None:
            mean, std = norm.bias.detach(), norm.weight.detach()
        else:
            mean, std = self._measured_statistics(batches)
        self.margin.copy_(gaussian_negative_margin(mean.cpu(), std.cpu()).to(self.margin.device))

    def _measured_statistics(self, batches: TeacherBatches) -> tuple[Tensor, Tensor]:
        (key,) = self.layers
        total = total_sq = None
        count = 0
        for batch in batches():
            x = as_map(batch[key]).double().transpose(0, 1).flatten(1)  # (C, B*H*W)
            total = x.sum(1) if total is None else total + x.sum(1)
            total_sq = x.pow(2).sum(1) if total_sq is None else total_sq + x.pow(2).sum(1)
            count += x.shape[1]
        if count == 0:
            raise UsageError("od: no teacher features to measure the margin from (empty training set?)")
        mean = total / count
        return mean, (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        s, t = connected_maps("od", self, self.connector, student, teacher)
        target = torch.maximum(t, self.margin.view(1, -1, 1, 1))
        return self.weight * partial_l2(s, target)
