"""Decoupled knowledge distillation (DKD), the loss of

    Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation."
    CVPR 2022.

The KD loss at temperature T splits into a target-class term and a
non-target-class term (the paper's KD = TCKD + (1 - p_y^T) NCKD). With
p = softmax(z / T) of the student's (S) and the teacher's (T) logits and the
label y:

    b      = [p_y, 1 - p_y]                          (binary: target vs the rest)
    p^     = softmax(z_{k != y} / T)                 (over the K - 1 non-target classes)
    TCKD   = KL(b^T || b^S)
    NCKD   = KL(p^^T || p^^S)
    L      = T^2 * (alpha * TCKD + beta * NCKD)

each KL summed over its classes and averaged over the batch, as the authors'
code (github.com/megvii-research/mdistiller, ``dkd_loss``: ``size_average=
False`` sums, ``/ target.shape[0]``). Defaults alpha = 1, beta = 8, T = 4
are the paper's CIFAR-100 settings and mdistiller's ``CFG.DKD`` (ALPHA 1.0,
BETA 8.0, T 4.0); its CE_WEIGHT 1.0 is the trainer's CE. ``distils_logits``:
the method's layer is the logits, ``fc3``. The teacher is detached.

The log-probabilities are computed with ``logsumexp`` (log p_y = z_y/T -
lse(z/T), log(1 - p_y) = lse(z_{k != y}/T) - lse(z/T)) rather than mdistiller's
``log`` of the summed softmax and its ``- 1000 * gt_mask`` masking: the same
values, finite for any logits.

Warm-up: the paper ramps DKD's weight linearly over the first 20 epochs
(mdistiller: ``min(epoch / WARMUP, 1)``, epochs counted from 1, WARMUP 20).
``forward`` knows no epoch; the class attribute ``weight_warmup_epochs = 20``
is read by the trainer (``DistillationMethod.loss_scale``, applied in
``kdlens.train.joint``), which multiplies the loss by min(1, epoch / 20).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlens.distill.base import METHODS, DistillationMethod
from kdlens.errors import UsageError


def _kl_from_logs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities, summed over the last dim."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def decoupled_terms(z_s: Tensor, z_t: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each averaged over the batch (not yet times T^2)."""
    b, k = z_s.shape
    target_mask = F.one_hot(targets, k).bool()

    def parts(z: Tensor) -> tuple[Tensor, Tensor]:
        z = z / temperature
        lse = torch.logsumexp(z, dim=1)
        others = z[~target_mask].view(b, k - 1)
        log_target = z.gather(1, targets.view(-1, 1))[:, 0] - lse
        log_rest = torch.logsumexp(others, dim=1) - lse
        return torch.stack([log_target, log_rest], dim=1), F.log_softmax(others, dim=1)

    binary_s, non_target_s = parts(z_s)
    binary_t, non_target_t = parts(z_t)
    tckd = _kl_from_logs(binary_t, binary_s).mean()
    nckd = _kl_from_logs(non_target_t, non_target_s).mean()
    return tckd, nckd


@METHODS.register("dkd")
class DecoupledKD(DistillationMethod):
    distils_logits = True
    # Read by the trainer: the loss is scaled by min(1, epoch / 20), epoch from 1.
    weight_warmup_epochs = 20

    def __init__(self, layer: str = "fc3", alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UsageError(f"dkd: {name} = {value!r}: expected a finite number >= 0")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise UsageError(f"dkd: temperature = {temperature!r}: expected a finite number > 0")
        self.layers = (layer,)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"layer={self.layers[0]!r}, alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}"

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        z_s, z_t = self.features(student, teacher)
        if targets is None:
            raise UsageError("dkd needs the targets: it splits the logits at the target class")
        if z_s.dim() != 2 or z_s.shape[1] < 2:
            raise UsageError(f"dkd: logits of shape {tuple(z_s.shape)}: expected (B, K) with K >= 2 classes")
        tckd, nckd = decoupled_terms(z_s, z_t, targets, self.temperature)
        return self.temperature**2 * (self.alpha * tckd + self.beta * nckd)
