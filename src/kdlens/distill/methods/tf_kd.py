"""Teacher-free knowledge distillation with a manually designed teacher
(Tf-KD_reg), the loss of

    Yuan, Tay, Li, Wang, Feng. "Revisiting Knowledge Distillation via Label
    Smoothing Regularization." CVPR 2020 (arXiv:1909.11723, first titled
    "Revisit Knowledge Distillation: a Teacher-free Framework").

A virtual teacher puts probability a on the correct class c and spreads the
rest uniformly (the paper's p^d),

    p^d(k) = a              if k = c
           = (1 - a)/(K - 1) otherwise,

and the student (logits z_s, labels y) learns from it as from a KD teacher:

    L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL( p^d_T || softmax(z_s / T) )

with p^d_T = softmax(log p^d / T), the virtual teacher softened at T as a
network with logits log p^d would be (so at T = 1 it is p^d itself). The KL
is summed over classes and averaged over the batch (``batchmean``), the CE is
the usual mean; T^2 as in Hinton KD (``kdlens.distill.methods.kd``).
``includes_task_loss``: the trainer adds no second CE. The method reads only
the student's logits; a teacher's features, if given, are ignored.

Defaults: a = 0.99 (the paper and the authors' code, ``correct_prob``),
T = 20 and alpha = 0.1: the authors' CIFAR-100 settings for ResNet-18
(github.com/yuanli2333/Teacher-free-Knowledge-Distillation,
``experiments/base_experiments/base_resnet18/params.json``:
``reg_temperature`` 20, ``reg_alpha`` 0.1; their other CIFAR-100 students
use T = 10 or 40 and alpha from 0.1 to 0.95).

The authors' code (``loss_kd_regularization``) departs from the paper's
formula in three ways we do not follow: it softens the virtual teacher's
*probabilities* as if they were logits, softmax(p^d / T) (at T = 20 and
K = 100 that is 0.0105 on the correct class against 0.0100 elsewhere, nearly
uniform), compares it with the student's *unsoftened* softmax(z_s), and
weighs the KL, averaged over batch *and* classes (``nn.KLDivLoss()``'s
default), by a per-model ``multiplier`` (100 for ResNet-18) instead of T^2.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlens.distill.base import METHODS, DistillationMethod
from kdlens.errors import UsageError


def virtual_teacher_log_probs(targets: Tensor, num_classes: int, a: float, temperature: float) -> Tensor:
    """log p^d_T: (B, K) log-probabilities of the virtual teacher softened at T."""
    if num_classes < 2:
        raise UsageError(f"tf_kd: {num_classes} class(es): expected at least 2")
    rest = math.log((1 - a) / (num_classes - 1))
    logits = torch.full((len(targets), num_classes), rest, device=targets.device)
    logits.scatter_(1, targets.view(-1, 1), math.log(a))
    return F.log_softmax(logits / temperature, dim=1)


@METHODS.register("tf_kd")
class TeacherFreeKD(DistillationMethod):
    includes_task_loss = True
    distils_logits = True

    def __init__(self, layer: str = "fc3", temperature: float = 20.0, alpha: float = 0.1, a: float = 0.99) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise UsageError(f"tf_kd: temperature = {temperature!r}: expected a finite number > 0")
        if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
            raise UsageError(f"tf_kd: alpha = {alpha!r}: expected 0 <= alpha <= 1")
        if not (isinstance(a, (int, float)) and 0 < a < 1):
            raise UsageError(f"tf_kd: a = {a!r}: expected the correct class's probability, 0 < a < 1")
        self.layers = (layer,)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.a = float(a)

    def extra_repr(self) -> str:
        return f"layer={self.layers[0]!r}, temperature={self.temperature}, alpha={self.alpha}, a={self.a}"

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        z_s = self._logits(student, targets)
        return (1 - self.alpha) * F.cross_entropy(z_s, targets) + self.soft_loss(z_s, targets)

    def distillation_terms(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> tuple[float, Tensor]:
        """The cross-entropy's weight 1 - alpha and the virtual-teacher term (a gradient balance weighs them)."""
        return 1.0 - self.alpha, self.soft_loss(self._logits(student, targets), targets)

    def _logits(self, student: Mapping[str, Tensor], targets: Optional[Tensor]) -> Tensor:
        (layer,) = self.layers
        z_s = student[layer]
        if targets is None:
            raise UsageError("tf_kd needs the targets: its virtual teacher is built from the labels")
        if z_s.dim() != 2:
            raise UsageError(f"tf_kd: layer {layer!r} of shape {tuple(z_s.shape)}: expected (B, K) logits")
        return z_s

    def soft_loss(self, z_s: Tensor, targets: Tensor) -> Tensor:
        """alpha * T^2 * KL(virtual teacher^T || softmax(z_s / T)), averaged over the batch."""
        t = self.temperature
        log_p_teacher = virtual_teacher_log_probs(targets, z_s.shape[1], self.a, t).to(z_s.dtype)
        soft = F.kl_div(F.log_softmax(z_s / t, dim=1), log_p_teacher, reduction="batchmean", log_target=True)
        return self.alpha * t * t * soft
