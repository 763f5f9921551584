"""Factor networks shared by FT and IE-KD.

The teacher's *paraphraser* is the auto-encoder of the IE-KD supplement's
Table 3 (Huang et al., CVPR 2021), itself the paraphraser of FT (Kim, Park,
Kwak, "Paraphrasing Complex Network: Network Compression via Factor
Transfer", NeurIPS 2018): three 3x3 convolutions and three 3x3 transposed
convolutions, stride 1, padding 1, each followed by batch norm and
LeakyReLU(0.1). Only the second convolution changes the channel count, from C
to the factor channels C / ratio (ratio 2 in both papers: FT's "factor rate"
k = 0.5); the second transposed convolution restores C. Spatial size never
changes. It is trained by the reconstruction loss (IE-KD Eq. 1)

    L_rec = || f_T - R(f_T) ||^2        (mean over elements, as FT's code)

and then frozen; its encoder half gives the teacher's factor F_T.

The student's *translator* / *factor encoder* is that encoder half on the
student's channels: conv C_s -> C_s, conv C_s -> factor, conv factor -> factor.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.distill.base import TeacherBatches, as_map
from kdlens.errors import UsageError


def _block(cin: int, cout: int, transposed: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    return [conv(cin, cout, 3, stride=1, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]


def factor_channels(channels: int, ratio: float) -> int:
    if not ratio > 0:
        raise UsageError(f"factor_ratio = {ratio!r}: expected > 0 (input channels / factor channels)")
    return max(1, round(channels / ratio))


class FactorEncoder(nn.Sequential):
    """conv C -> C, conv C -> factor, conv factor -> factor (Table 3, Conv1-3)."""

    def __init__(self, channels: int, factors: int) -> None:
        super().__init__(*_block(channels, channels), *_block(channels, factors), *_block(factors, factors))


class FactorAutoEncoder(nn.Module):
    """The paraphraser: ``encoder`` gives the factor, ``decoder`` reconstructs."""

    def __init__(self, channels: int, factors: int) -> None:
        super().__init__()
        self.encoder = FactorEncoder(channels, factors)
        self.decoder = nn.Sequential(
            *_block(factors, factors, True), *_block(factors, channels, True), *_block(channels, channels, True)
        )

    def forward(self, feature: Tensor) -> Tensor:
        return self.decoder(self.encoder(feature))

    def reconstruction_loss(self, feature: Tensor) -> Tensor:
        """IE-KD Eq. 1 on a (B, C, H, W) or (B, C) feature."""
        feature = as_map(feature)
        return F.mse_loss(self(feature), feature)


def fit_autoencoder(
    autoencoder: FactorAutoEncoder,
    batches: TeacherBatches,
    layer: str,
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
) -> list[float]:
    """Train the paraphraser on the teacher's features by Eq. 1 (SGD, cosine
    schedule; the IE-KD supplement: at most 30 epochs from lr 0.1), then
    freeze it. Returns the mean reconstruction loss of each epoch."""
    if epochs < 0:
        raise UsageError(f"autoencoder epochs = {epochs!r}: expected >= 0")
    optimizer = torch.optim.SGD(autoencoder.parameters(), lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    losses: list[float] = []
    autoencoder.requires_grad_(True)
    autoencoder.train()
    for _ in range(epochs):
        total, count = 0.0, 0
        batch: Mapping[str, Tensor]
        source: Iterable[Mapping[str, Tensor]] = batches()
        for batch in source:
            loss = autoencoder.reconstruction_loss(batch[layer])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
        schedule.step()
        losses.append(total / max(count, 1))
    optimizer.zero_grad(set_to_none=True)
    freeze(autoencoder)
    return losses


def freeze(module: nn.Module) -> None:
    module.eval()
    module.requires_grad_(False)
