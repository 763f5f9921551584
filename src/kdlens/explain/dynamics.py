"""Learning dynamics of knowledge points over a run's epochs (paper, Sec. 3.3-3.4).

Every per-epoch array here is indexed by epoch number: row 0 is the
initialisation w_0, row j the checkpoint after epoch j (j = 1..M).  The paper's
quantities run over j = 1..M, hence ``first_epoch=1``; pass 0 only if the
initialisation should compete too.

* weight distance d_j = sum_{k=1..j} ||w_k - w_{k-1}|| / ||w_0||, d_0 = 0 (Sec. 3.3);
* m_hat(x) = argmax_j N_fg,j(x), D(x) = d_{m_hat(x)}; D_mean, D_var = mean and
  variance of D over samples (Eq. 8);
* rho(x) = |S_M(x)| / |union_{j=1..M} S_j(x)| with S_j the foreground knowledge
  points after epoch j (Eq. 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor


def weight_distances(states: Sequence[Mapping[str, Tensor]], names: Sequence[str] | None = None) -> Tensor:
    """(E,) float64 cumulative weight distances d_0..d_{E-1} of checkpoints w_0..w_{E-1}.

    w is the concatenation of the tensors ``names`` of each state dict.  The
    caller decides which: pass the names of the parameters that training moved
    (e.g. ``[n for n, _ in model.named_parameters()]``, or for a distilled
    student only the layers trained by distillation).  ``names=None`` takes
    every floating-point tensor of ``states[0]``, which INCLUDES float buffers
    such as BatchNorm running statistics.
    """
    if not states:
        raise ValueError("weight_distances needs at least one state (w_0)")
    if names is None:
        names = [k for k, v in states[0].items() if torch.is_floating_point(v)]
    if not names:
        raise ValueError("no floating-point tensors selected")
    for j, state in enumerate(states):
        missing = [n for n in names if n not in state]
        if missing:
            raise KeyError(f"state {j} lacks {missing[:5]}")
    norm0 = sum(float(states[0][n].double().pow(2).sum()) for n in names) ** 0.5
    if norm0 == 0:
        raise ValueError("||w_0|| == 0: weight distances are relative to the initial weights")
    steps = [0.0]
    for prev, cur in zip(states[:-1], states[1:]):
        sq = sum(float((cur[n].double() - prev[n].double()).pow(2).sum()) for n in names)
        steps.append(sq**0.5 / norm0)
    return torch.tensor(steps, dtype=torch.float64).cumsum(0)


def _check_epochs(per_epoch: Tensor, first_epoch: int) -> None:
    if not 0 <= first_epoch < per_epoch.shape[0]:
        raise ValueError(f"first_epoch {first_epoch} is outside the {per_epoch.shape[0]} epochs given")


def peak_epoch(n_fg_per_epoch: Tensor, first_epoch: int = 1) -> Tensor:
    """(B,) m_hat(x) = argmax_{j >= first_epoch} N_fg,j(x); ties go to the FIRST epoch reaching the max.

    A sample with no foreground point at any epoch therefore peaks at ``first_epoch``.
    """
    _check_epochs(n_fg_per_epoch, first_epoch)
    counts = n_fg_per_epoch[first_epoch:].double()
    is_max = counts == counts.max(0, keepdim=True).values
    # the first True along epochs: argmax of a 0/1 tensor is not documented to pick the first
    order = torch.arange(counts.shape[0], 0, -1, device=counts.device, dtype=torch.float64)[:, None]
    return first_epoch + (is_max * order).argmax(0)


def distance_to_peak(n_fg_per_epoch: Tensor, distances: Tensor, first_epoch: int = 1) -> Tensor:
    """(B,) D(x) = d_{m_hat(x)}: the weight distance at which x has the most foreground points."""
    if n_fg_per_epoch.dim() != 2 or n_fg_per_epoch.shape[0] != distances.shape[0]:
        raise ValueError(
            f"n_fg_per_epoch {tuple(n_fg_per_epoch.shape)} must be (E, B) with E = len(distances) = {distances.shape[0]}"
        )
    return distances.double().to(n_fg_per_epoch.device)[peak_epoch(n_fg_per_epoch, first_epoch)]


def d_mean_var(
    n_fg_per_epoch: Tensor, distances: Tensor, first_epoch: int = 1, mask: Tensor | None = None
) -> tuple[float, float]:
    """(D_mean, D_var) of Eq. 8 over the samples (those with ``mask`` True, if given).

    D_var is the POPULATION variance (divide by the number of samples): Eq. 8
    writes Var_{x in X} as the variance of the empirical distribution over X,
    like E_{x in X} for D_mean.
    """
    d = distance_to_peak(n_fg_per_epoch, distances, first_epoch)
    if mask is not None:
        d = d[mask.to(d.device).bool()]
    if d.numel() == 0:
        raise ValueError("no sample to average over")
    return float(d.mean()), float(d.var(correction=0))


@dataclass
class Stability:
    rho: Tensor  # (B,) float64; 0 where not defined
    defined: Tensor  # (B,) bool: the union of foreground points is not empty
    mean: float | None  # mean rho over defined samples; None if none


def stability(fg_points_per_epoch: Tensor, first_epoch: int = 1) -> Stability:
    """rho of Eq. 9 from foreground knowledge points (E, B, n) bool (``KnowledgePoints.fg_points``).

    The union runs over epochs ``first_epoch..E-1``, S_M is the last row.  A
    sample with no foreground point at any of those epochs has an empty union:
    it is marked undefined (rho 0 there) and left out of the mean.
    """
    if fg_points_per_epoch.dim() != 3:
        raise ValueError(f"fg_points_per_epoch must be (E, B, n), got {tuple(fg_points_per_epoch.shape)}")
    _check_epochs(fg_points_per_epoch, first_epoch)
    points = fg_points_per_epoch[first_epoch:].bool()
    union = points.any(0).sum(1)
    final = points[-1].sum(1)
    defined = union > 0
    rho = torch.where(defined, final.double() / union.clamp(min=1).double(), torch.zeros_like(final, dtype=torch.float64))
    mean = float(rho[defined].mean()) if bool(defined.any()) else None
    return Stability(rho=rho, defined=defined, mean=mean)
