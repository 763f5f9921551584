"""Knowledge points and their quality (paper, Sec. 3.2, Eq. 5-7).

Given the pixel-wise entropies H_i of one layer (``information_discarding``)
and foreground labels per unit:

* the baseline H_bar(x) = mean of H_i over the background units of x (the
  paper's text, ``baseline="sample"``, the default), or the mean of those
  per-sample baselines over all analysed samples of the checkpoint (the
  authors' code, ``find_total_background``: ``baseline="dataset"``);
* unit i is a knowledge point when H_bar(x) - H_i > t(x), where t is the
  paper's fixed b (``relative=False``; b = 0.2 for images, 0.25 for AlexNet),
  or b times the standard deviation s_bg(x) of the background entropies of x
  (``relative=True``);
* N_fg(x), N_bg(x): the points on foreground / background units (Eq. 6-7);
* lambda = E_x[N_fg / (N_fg + N_bg)] (Eq. 5).

A sample is *undefined* when H_bar cannot be formed: it has no background
unit, or its entropies are not valid (``DiscardingResult.valid`` is False).
Undefined samples get h_bar = -inf (no unit lies below it), no points, zero
counts and a reason; they are left out of every summary.  Nothing is NaN.

Why a relative threshold for the converged estimator: the paper's b = 0.2 was
set against the authors' recipe, whose entropies span about one nat per
image; a converged optimum spreads them several times wider (units the
feature ignores run up to the sigma bound), so the same b would call most
units "significantly lower than the background". Measured in standard
deviations of the background, "significantly lower" means the same whatever
the spread: with b = 1, a unit is a point when it keeps more information than
the background does, by more than the background's own variation. The
default rules are in :data:`DEFAULT_RULES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kdlens.explain.common import check_number
from kdlens.errors import UsageError


@dataclass(frozen=True)
class PointRule:
    """How knowledge points are told from entropies: the threshold b, whether it
    is in units of the background's standard deviation, and which H_bar."""

    threshold: float
    relative: bool = False
    baseline: Literal["sample", "dataset"] = "sample"

    def __post_init__(self) -> None:
        check_number("threshold", self.threshold, inclusive=True)
        if self.baseline not in ("sample", "dataset"):
            raise UsageError(f"baseline = {self.baseline!r}: expected 'sample' or 'dataset'")


# b = 1 background standard deviation for the converged estimator; the
# paper's b for the authors' recipe (see ``paper.paper_defaults`` for AlexNet's)
DEFAULT_RULES = {"converged": PointRule(1.0, relative=True), "paper": PointRule(0.2)}


@dataclass
class KnowledgePoints:
    h_bar: Tensor  # (B,) baseline entropy; -inf where not defined
    threshold: Tensor  # (B,) the entropy gap below H_bar that makes a point
    is_point: Tensor  # (B, n) bool
    foreground: Tensor  # (B, n) bool
    n_fg: Tensor  # (B,) long, Eq. 7
    n_bg: Tensor  # (B,) long, Eq. 6
    defined: Tensor  # (B,) bool
    reason: list[str | None]

    @property
    def fg_points(self) -> Tensor:
        """(B, n) bool: the foreground knowledge points, S(x) of Eq. 9."""
        return self.is_point & self.foreground


def knowledge_points(
    entropy: Tensor,
    foreground: Tensor,
    b: float = 0.2,
    valid: Tensor | None = None,
    *,
    relative: bool = False,
    baseline: Literal["sample", "dataset"] = "sample",
    present: Tensor | None = None,
) -> KnowledgePoints:
    """Knowledge points of each sample from entropies (B, n) and foreground labels (B, n) bool.

    ``relative``: the threshold is ``b`` background standard deviations of the
    sample; ``baseline``: H_bar per sample or averaged over the defined samples.
    ``present`` (B, n) bool: which units each sample has, when samples have
    different numbers of units (words of sentences); a unit a sample lacks
    (NaN entropy) is neither foreground nor background and never a point."""
    PointRule(b, relative, baseline)  # validates
    if entropy.dim() != 2 or tuple(foreground.shape) != tuple(entropy.shape):
        raise UsageError(
            f"entropy {tuple(entropy.shape)} and foreground {tuple(foreground.shape)} must both be (B, n_units)"
        )
    foreground = foreground.bool()
    if present is None:
        present = torch.ones_like(foreground)
    elif tuple(present.shape) != tuple(entropy.shape):
        raise UsageError(f"present {tuple(present.shape)} must be (B, n_units) like entropy {tuple(entropy.shape)}")
    present = present.bool().to(entropy.device)
    foreground = foreground & present
    background = ~foreground & present
    ok = torch.ones(entropy.shape[0], dtype=torch.bool, device=entropy.device) if valid is None else valid.bool()
    finite = (torch.isfinite(entropy) | ~present).all(1)
    has_bg = background.any(1)
    defined = ok & finite & has_bg
    reason: list[str | None] = []
    for v, f, g in zip(ok.tolist(), finite.tolist(), has_bg.tolist()):
        if not v:
            reason.append("invalid sample: its information discarding was not measured")
        elif not f:
            reason.append("entropy is not finite")
        elif not g:
            reason.append("no background unit: the baseline entropy H_bar is undefined")
        else:
            reason.append(None)
    safe = torch.where(torch.isfinite(entropy) & present, entropy, torch.zeros_like(entropy))
    bg_sum = (safe * background).sum(1)
    bg_count = background.sum(1).clamp(min=1)
    own_bar = bg_sum / bg_count
    if baseline == "dataset" and bool(defined.any()):
        own_bar = torch.full_like(own_bar, float(own_bar[defined].mean()))
    h_bar = torch.where(defined, own_bar, torch.full_like(bg_sum, -torch.inf))
    if relative:
        own_mean = bg_sum / bg_count
        spread = ((((safe - own_mean[:, None]) ** 2) * background).sum(1) / bg_count).sqrt()
        threshold = b * spread
    else:
        threshold = torch.full_like(bg_sum, b)
    is_point = ((h_bar[:, None] - safe) > threshold[:, None]) & defined[:, None] & present
    return KnowledgePoints(
        h_bar=h_bar,
        threshold=threshold,
        is_point=is_point,
        foreground=foreground,
        n_fg=(is_point & foreground).sum(1),
        n_bg=(is_point & background).sum(1),
        defined=defined,
        reason=reason,
    )


def foreground_ratio(n_fg: Tensor, n_bg: Tensor) -> tuple[float | None, int]:
    """lambda of Eq. 5 and the number of samples left out of it.

    The mean of N_fg / (N_fg + N_bg) over the samples with at least one
    knowledge point; a sample without any (or undefined, whose counts are 0)
    has no ratio and is counted as excluded.  None when every sample is excluded.
    """
    total = n_fg + n_bg
    used = total > 0
    excluded = int((~used).sum())
    if not bool(used.any()):
        return None, excluded
    return float((n_fg[used].double() / total[used].double()).mean()), excluded


@dataclass
class PointSummary:
    n_fg_mean: float | None  # mean N_fg over defined samples
    n_bg_mean: float | None
    foreground_ratio: float | None  # lambda, Eq. 5
    n_defined: int
    n_undefined: int
    n_without_points: int  # defined samples excluded from lambda


def summarize_points(points: KnowledgePoints) -> PointSummary:
    """Mean N_fg, N_bg and lambda over the defined samples (the paper's table entries)."""
    d = points.defined
    n_def = int(d.sum())
    if n_def == 0:
        return PointSummary(None, None, None, 0, len(d), 0)
    ratio, excluded = foreground_ratio(points.n_fg[d], points.n_bg[d])
    return PointSummary(
        n_fg_mean=float(points.n_fg[d].double().mean()),
        n_bg_mean=float(points.n_bg[d].double().mean()),
        foreground_ratio=ratio,
        n_defined=n_def,
        n_undefined=len(d) - n_def,
        n_without_points=excluded,
    )
