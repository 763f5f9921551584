"""Number of active neurons of a layer's representation (active subspace).

Cui, Zhang, Daulbaev, Gusak, Oseledets & Zhang, "Active Subspace of Neural
Networks: Structural Analysis and Universal Attacks" (arXiv:1910.13025, SIAM
J. Math. Data Sci. 2020), cited by the IE-KD paper (Huang et al., CVPR 2021,
Sec. 4.7 and Fig. 4b) as [6]: "the number of active neurons is the number of
directions to which the classification loss c(x) is sensitive".

Definition implemented. Let f = the output of ``layer`` for an input x,
flattened to p numbers (restricted to ``channels`` when given), and c the
cross-entropy of the layers above, ``model.forward_from(f, layer)``, against
the label. For n samples, with g_i = grad_f c(x_i),

    C = (1/n) sum_i g_i g_iᵀ   (uncentred gradient covariance, p x p),

with eigenvalues lambda_1 >= lambda_2 >= ... >= 0. The number of active
neurons is the smallest r with

    (lambda_1 + ... + lambda_r) / (lambda_1 + ... + lambda_p) >= energy.

The eigenvalues are the squared singular values of the n x p matrix G of the
g_i, divided by n, so C is never formed (at most min(n, p) are non-zero); G is
held in float64 on the CPU, n * p * 8 bytes.

What is ours: the energy criterion and its default share 0.95 are our choice;
we could not confirm the exact threshold Cui et al. use to cut the spectrum,
so counts are comparable across models measured here, not with their tables
(the paper's 46 and 45 included). The samples are the
first ``max_samples`` of the dataset, the model in eval mode. Restricting to a
channel subset keeps the gradient coordinates of those channels only (the
IE-KD paper counts the active neurons of the inheritance channels): it is the
active subspace of c as a function of those channels, the others held fixed.
If every gradient is zero the count is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from kdlens.errors import UsageError
from kdlens.models.base import NamedLayerModel
from kdlens.probes._channels import channel_index
from kdlens.probes._data import first_batches


@dataclass(frozen=True)
class ActiveNeurons:
    """``count`` active neurons out of ``dimension`` = p; ``eigenvalues`` are the
    min(n, p) largest eigenvalues of C, float64, descending; ``samples`` = n."""

    count: int
    eigenvalues: Tensor
    dimension: int
    energy: float
    samples: int


def _check_energy(energy: float) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not math.isfinite(energy):
        raise UsageError(f"energy = {energy!r}: expected a number in (0, 1]")
    if not 0 < energy <= 1:
        raise UsageError(f"energy = {energy!r}: expected a share of the eigenvalue sum in (0, 1]")
    return float(energy)


def count_active(eigenvalues: Tensor, energy: float) -> int:
    """The smallest r whose r largest eigenvalues hold a share ``energy`` of their sum."""
    energy = _check_energy(energy)
    values = torch.sort(eigenvalues.to(torch.float64).clamp(min=0), descending=True).values
    total = values.sum()
    if values.numel() == 0 or total <= 0:
        return 0
    share = torch.cumsum(values, 0) / total
    # The tolerance keeps energy = 1 from failing on the rounding of the cumsum.
    return min(int((share < energy - 1e-12).sum()) + 1, values.numel())


def active_neurons(
    model: NamedLayerModel,
    layer: str,
    dataset: Dataset,
    *,
    channels: Tensor | None = None,
    energy: float = 0.95,
    max_samples: int = 500,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
) -> ActiveNeurons:
    """Active neurons of ``layer``'s output (optionally only ``channels``).

    ``model`` must already be on ``device``; it is put in eval mode and its mode
    restored afterwards; parameter gradients are not touched. ``channels``
    indexes dimension 1 of the layer output, (B, C) or (B, C, H, W).
    """
    energy = _check_energy(energy)
    model.check_layer(layer)
    rows: list[Tensor] = []
    index: Tensor | None = None
    was_training = model.training
    try:
        model.eval()
        for images, labels in first_batches(dataset, max_samples, batch_size, device):
            with torch.no_grad():
                feature = model.forward_to(images, layer)
            feature = feature.detach().requires_grad_(True)
            # Summed loss: in eval mode samples do not interact, so row i of the
            # gradient is grad_f c(x_i).
            loss = F.cross_entropy(model.forward_from(feature, layer), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, feature)
            if channels is not None:
                if grad.dim() < 2:
                    raise UsageError(f"layer {layer!r} output has shape {tuple(grad.shape)}: expected (B, C, ...)")
                if index is None:
                    index = channel_index(channels, grad.shape[1], "channels").to(grad.device)
                grad = grad[:, index]
            rows.append(grad.reshape(grad.shape[0], -1).to(torch.float64).cpu())
    finally:
        model.train(was_training)
    gradients = torch.cat(rows)
    n, p = gradients.shape
    eigenvalues = torch.linalg.svdvals(gradients) ** 2 / n
    return ActiveNeurons(
        count=count_active(eigenvalues, energy),
        eigenvalues=eigenvalues,
        dimension=p,
        energy=energy,
        samples=n,
    )
