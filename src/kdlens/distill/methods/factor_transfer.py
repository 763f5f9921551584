"""Factor transfer (FT), the loss of

    Kim, Park, Kwak. "Paraphrasing Complex Network: Network Compression via
    Factor Transfer." NeurIPS 2018.

A paraphraser P (an auto-encoder, ``kdlens.distill.factors``) is trained on
the teacher's feature f_T by reconstruction and frozen; its encoder gives the
teacher factor F_T = P_enc(f_T). A translator T on the student's feature is
trained jointly with the student, F_S = T(f_S), and

    L = beta * mean | F_S / ||F_S||_2 - F_T / ||F_T||_2 |        (p = 1)

per sample-normalised factors, the absolute difference averaged over the
batch and the factor's elements (the authors' ``nn.L1Loss``). Defaults: beta
= 500 and factor rate k = 0.5 (``factor_ratio`` = 2) are the FT paper's
CIFAR settings; the paraphraser's training, 30 epochs from lr 0.1, is the
IE-KD supplement's (FT itself trains it for 10 epochs). Spatial sizes that
differ are pooled to the smaller; channel counts may differ freely.
"""

from __future__ import annotations

from typing import Mapping, Optional

from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod, TeacherBatches, as_map, match_spatial
from kdlens.distill.factors import FactorAutoEncoder, FactorEncoder, factor_channels, fit_autoencoder, freeze
from kdlens.distill.similarity import l1_distance
from kdlens.errors import UsageError


class FactorMethod(DistillationMethod):
    """What FT and IE-KD share: a frozen paraphraser of the teacher's feature."""

    def __init__(self, layer: str, factor_ratio: float, paraphraser_epochs: int, paraphraser_lr: float) -> None:
        super().__init__()
        factor_channels(8, factor_ratio)  # validates the ratio
        if paraphraser_epochs < 0:
            raise UsageError(f"paraphraser_epochs = {paraphraser_epochs!r}: expected >= 0")
        if not paraphraser_lr > 0:
            raise UsageError(f"paraphraser_lr = {paraphraser_lr!r}: expected > 0")
        self.layers = (layer,)
        self.factor_ratio = float(factor_ratio)
        self.paraphraser_epochs = int(paraphraser_epochs)
        self.paraphraser_lr = float(paraphraser_lr)
        self.paraphraser: Optional[FactorAutoEncoder] = None
        self.paraphraser_losses: list[float] = []

    def _build_paraphraser(self, teacher_feature: Tensor) -> int:
        channels = as_map(teacher_feature).shape[1]
        factors = factor_channels(channels, self.factor_ratio)
        self.paraphraser = FactorAutoEncoder(channels, factors)
        freeze(self.paraphraser)  # until fit_teacher trains it (or a checkpoint fills it)
        return factors

    def fit_teacher(self, batches: TeacherBatches, teacher: nn.Module) -> None:
        self.paraphraser_losses = fit_autoencoder(
            self._require_paraphraser(), batches, self.layers[0],
            epochs=self.paraphraser_epochs, lr=self.paraphraser_lr,
        )

    def _require_paraphraser(self) -> FactorAutoEncoder:
        if self.paraphraser is None:
            raise RuntimeError(f"{type(self).__name__} is not set up; call setup() with a batch of features first")
        return self.paraphraser

    def teacher_factor(self, teacher_feature: Tensor) -> Tensor:
        return self._require_paraphraser().encoder(as_map(teacher_feature.detach()))

    def train(self, mode: bool = True) -> "FactorMethod":
        super().train(mode)
        if self.paraphraser is not None and not any(p.requires_grad for p in self.paraphraser.parameters()):
            self.paraphraser.eval()  # frozen: its batch-norm statistics stay put
        return self

    def trainable_parts(self) -> list[nn.Module]:
        return [m for name, m in self.named_children() if name != "paraphraser"]


@METHODS.register("ft")
class FactorTransfer(FactorMethod):
    def __init__(
        self, layer: str = "conv", beta: float = 500.0, factor_ratio: float = 2.0,
        paraphraser_epochs: int = 30, paraphraser_lr: float = 0.1,
    ) -> None:
        super().__init__(layer, factor_ratio, paraphraser_epochs, paraphraser_lr)
        if not beta >= 0:
            raise UsageError(f"beta = {beta!r}: expected >= 0")
        self.beta = float(beta)
        self.translator: Optional[FactorEncoder] = None

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        (layer,) = self.layers
        factors = self._build_paraphraser(teacher[layer])
        self.translator = FactorEncoder(as_map(student[layer]).shape[1], factors)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        f_s, f_t = self.features(student, teacher, same_shape=False)
        if self.translator is None:
            raise RuntimeError("ft is not set up; call setup() with a batch of features first")
        factor_s, factor_t = match_spatial(self.translator(as_map(f_s)), self.teacher_factor(f_t))
        return self.beta * l1_distance(factor_s, factor_t)
