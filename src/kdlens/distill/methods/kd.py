"""Logit distillation, the loss of

    Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network."
    NIPS 2014 Deep Learning Workshop (arXiv:1503.02531, 2015).

    L = alpha * T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )
        + (1 - alpha) * CE(z_s, y)

where z_s, z_t are the student's and the teacher's logits (the output of
``layer``), T the temperature and y the labels. The KL term is averaged over
the batch (``F.kl_div(log_softmax(z_s/T), softmax(z_t/T), reduction="batchmean")``:
summed over classes, divided by the batch size), the CE term is the usual mean
over the batch. The teacher's logits are detached.

Why T^2: the gradient of the soft term with respect to the logits scales as
1/T^2 (paper, sec. 2), so multiplying by T^2 keeps its size relative to the
hard-label term roughly unchanged when T is changed.

Defaults T = 4, alpha = 0.9 are not from the paper (which tunes T per task);
they follow common CIFAR practice, e.g. the RepDistiller benchmark (Tian,
Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020), which
uses T = 4 with weight 0.9 on the KD term and 0.1 on the cross-entropy.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch.nn.functional as F
from torch import Tensor

from kdlens.distill.base import METHODS, DistillationMethod
from kdlens.errors import UsageError


@METHODS.register("kd")
class HintonKD(DistillationMethod):
    includes_task_loss = True
    distils_logits = True

    def __init__(self, layer: str = "fc3", temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        if not temperature > 0:
            raise UsageError(f"temperature = {temperature!r}: expected > 0")
        if not 0 <= alpha <= 1:
            raise UsageError(f"alpha = {alpha!r}: expected 0 <= alpha <= 1")
        self.layers = (layer,)
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        loss = self.soft_loss(student, teacher)
        if self.alpha < 1:
            if targets is None:
                raise UsageError(
                    f"kd with alpha = {self.alpha} < 1 needs targets for the cross-entropy term"
                )
            loss = loss + (1 - self.alpha) * F.cross_entropy(student[self.layers[0]], targets)
        return loss

    def soft_loss(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> Tensor:
        """alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch."""
        z_s, z_t = self.features(student, teacher)
        t = self.temperature
        soft = F.kl_div(F.log_softmax(z_s / t, dim=1), F.softmax(z_t / t, dim=1), reduction="batchmean")
        return self.alpha * t * t * soft

    def distillation_terms(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> tuple[float, Tensor]:
        """The cross-entropy's weight 1 - alpha and the soft term."""
        return 1.0 - self.alpha, self.soft_loss(student, teacher)
