"""Attention transfer, the activation-based loss of

    Zagoruyko, Komodakis. "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer."
    ICLR 2017.

For a feature map A of shape (B, C, H, W) the attention map is

    Q = vec( mean_c |A_c|^p ) / || vec( mean_c |A_c|^p ) ||_2      (p = 2)

per sample, shape (B, H*W). The paper writes a sum over channels; the
authors' code uses the mean, which is the same after L2 normalisation.
The loss is

    L = beta / 2 * mean_{b, j} ( Q_s[b, j] - Q_t[b, j] )^2

with beta = 1000: exactly the authors' code
(``(at(x) - at(y)).pow(2).mean()`` weighted by ``beta / 2``, github.com/
szagoruyko/attention-transfer), i.e. the squared difference is averaged over
batch *and* spatial positions, not the paper's per-sample L2 norm
||Q_s - Q_t||_p. Averaging over positions is what makes beta = 1000 the right
scale across layers of different resolution, so we keep the code's form with
its beta.

Spatial sizes may differ: each feature map larger than the common size
(min H, min W) is reduced to it by adaptive average pooling of the *feature
map* (before |.|^p and the channel mean), as RepDistiller does. Channel counts
may differ freely, since the channel dimension is averaged out. The teacher
is detached.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch.nn.functional as F
from torch import Tensor

from kdlens.distill.base import METHODS, DistillationMethod, pooled_maps
from kdlens.errors import UsageError


def attention_map(feature: Tensor, p: int = 2) -> Tensor:
    """(B, C, H, W) -> (B, H*W): mean over channels of |A|^p, L2-normalised per sample."""
    if feature.dim() != 4:
        raise UsageError(f"feature of shape {tuple(feature.shape)}: expected (B, C, H, W)")
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


@METHODS.register("at")
class AttentionTransfer(DistillationMethod):
    def __init__(self, layer: str = "conv", beta: float = 1000.0, p: int = 2) -> None:
        super().__init__()
        if not beta >= 0:
            raise UsageError(f"beta = {beta!r}: expected >= 0")
        if not p > 0:
            raise UsageError(f"p = {p!r}: expected > 0")
        self.layers = (layer,)
        self.beta = float(beta)
        self.p = p

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        (layer,) = self.layers
        f_s, f_t = self.features(student, teacher, same_shape=False)
        f_s, f_t = pooled_maps("at", layer, f_s, f_t, "the attention map of one position is constant")
        q_s, q_t = attention_map(f_s, self.p), attention_map(f_t, self.p)
        return self.beta / 2 * (q_s - q_t).pow(2).mean()
