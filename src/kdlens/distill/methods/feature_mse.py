"""Feature distillation from one layer, the protocol of

    Cheng, Rao, Chen, Zhang. "Explaining Knowledge Distillation by Quantifying
    the Knowledge." CVPR 2020 (journal version: sec. 4.1, "Distillation").

    L = ||f_T(x) - f_S(x)||^2

where f is the feature of layer l. The default ``reduction="sum"`` is exactly
that: squared differences summed over the feature, averaged over the batch.
``reduction="mean"`` divides it by the feature size as well: the same
minimiser with gradients smaller by that factor, which suits very large conv
feature maps (raise the learning rate accordingly).
"""

from __future__ import annotations

from typing import Literal, Mapping, Optional

from torch import Tensor

from kdlens.distill.base import METHODS, DistillationMethod
from kdlens.errors import UsageError


@METHODS.register("feature_mse")
class FeatureMSE(DistillationMethod):
    def __init__(self, layer: str, reduction: Literal["mean", "sum"] = "sum") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise UsageError(f"reduction = {reduction!r}: expected 'mean' or 'sum'")
        self.layers = (layer,)
        self.reduction = reduction

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        f_s, f_t = self.features(student, teacher)
        squared = (f_s - f_t).pow(2).flatten(1)
        per_sample = squared.mean(1) if self.reduction == "mean" else squared.sum(1)
        return per_sample.mean()
