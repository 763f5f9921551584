"""The authors' recipe for information discarding, exactly as released.

Cheng et al. published the per-image script behind the paper
(``sigma/train_sigma.py`` and ``NoiseLayer`` in ``model/models.py`` of
Jenniferlyx/Explaining-Knowledge-Distillation-by-Quantifying-the-Knowledge).
This module reproduces it, batched over images:

* sigma itself is the parameter (not log sigma), one per unit, starting at
  0.01; before every step it is clamped to [0.001, 1];
* every step draws 96 noisy copies x' = x + sigma o delta of the image;
* the feature is passed through a ReLU, and the feature loss is the MSE
  (mean over copies and feature elements) between f(x') and f(x), divided by
  delta_f^2, the same MSE at a uniform sigma = 0.01 (one draw of 96 copies);
* the entropy term is the MEAN over units of log sigma + 1/2 log(2 pi e),
  weighted by lambda = 7 (VGG, AlexNet) or 6 (ResNet):
  loss = MSE / delta_f^2 - lambda * mean_u H_u;
* plain SGD at lr 1e-4 for up to 80 steps; after step 59 (0-based), a sample
  whose mean entropy never exceeded -2.8 goes on with lambda * 1.5 to step
  79, any other sample stops there;
* the kept sigma is the iterate whose mean entropy is nearest -2.8 (the first
  such iterate on ties, as ``np.argmin``); the authors' script also scans
  the never-run steps after an early stop, whose entropy array holds zeros,
  which only matters if every run step lies more than 2.8 from the target:
  here only run steps are candidates;
* a sample whose delta_f^2 is 0 is invalid (the authors skip such an image).

This is NOT a converged optimum of Eq. 4: sigma moves at most lr * gradient a
step from 0.01 for 60-80 steps, and the answer is the iterate at a fixed mean
entropy. Its entropies therefore span a narrow range (about one nat per image),
and the threshold b = 0.2 of Sec. 4.1 (0.25 for AlexNet) was set against it.

Batching: samples are independent (the loss is a sum of per-sample losses and
SGD has no momentum), so one step on the batch equals one step on each image.
Per step the noise is drawn for the whole batch, (96, B, *sample_shape), and a
sample that has stopped simply takes no part; a one-image run that is given
its slice of the same draws gives the same sigma to float tolerance (tested).
With ``sample_seeds`` every sample draws from its own generator instead, so a
sample's sigma is the same whichever batch it is in, and equals that of the
authors' one-image procedure run with the same seed (tested; this is what
``kdlens analyze`` uses, and what ``benchmarks/analysis_throughput.py`` times).
The 96 * B noisy inputs of a step (and of the delta_f^2 draw) go through the
model at most ``max_batch`` at a time (default 128), their gradients
accumulated; the draws do not depend on ``max_batch``, so neither does the
result beyond float rounding (the memory bound is in ``common.py``). The
authors forward the 96 copies of one image at once.

The authors feed images in [0, 1] (``ToTensor`` without normalisation), so
their sigma is in pixel units; here sigma is in the units of the model's
input. For kdlens's built-in data (normalised with std 0.5) sigma = 1 is half
the pixel range, so the cap sits at twice the authors' in pixel units.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from kdlens.explain.common import (
    DEFAULT_MAX_BATCH,
    HALF_LOG_2PIE,
    DiscardingResult,
    NoiseStreams,
    check_count,
    check_inputs,
    check_number,
    forward_in_chunks,
    frozen_feature,
    invalid_reasons,
    noisy_distances,
)
from kdlens.modalities.units import UnitMap
from kdlens.errors import UsageError

NOISY_COPIES = 96
SIGMA_INIT = 0.01
SIGMA_BOUNDS = (0.001, 1.0)
LR = 1e-4
STEPS = 80
CHECK_STEP = 59  # args.epoch - args.epoch_break - 1
ENTROPY_TARGET = -2.8
WEIGHT_GROWTH = 1.5

# (lambda, b) per architecture family. Images: lambda from train_sigma.py, b
# from Sec. 4.1. Point clouds: b from Sec. 4.1 (0.25, and 0.5 for PointNet);
# the authors released no point-cloud script, so lambda is ours: VGG's 7. The
# entropy term's pull on a unit's sigma is lambda / (n sigma) for n units, and
# a cloud of the built-in demo has about as many units (253 points) as the
# paper's 16 x 16 grid (256 cells), so the recipe moves sigma at the same pace.
# BERT: b = 0.2 (Sec. 4.1); lambda is ours again, VGG's 7. With n units the
# entropy term pulls a unit's sigma by lambda / (n sigma) and the feature term
# by about 2 sigma c_u / delta_f^2 with c_u / sum(c) ~ 1 / n, so both scale as
# 1 / n and lambda alone sets their balance, whatever the number of units (12
# words or 256 cells). (A first choice, lambda scaled by 12 / 256, made the
# feature term win and found no points at all: every entropy stopped at the
# recipe's target.)
_FAMILY_DEFAULTS = {
    "vgg": (7.0, 0.2), "alexnet": (7.0, 0.25), "resnet": (6.0, 0.2),
    "pointnet2": (7.0, 0.25), "pointnet": (7.0, 0.5), "dgcnn": (7.0, 0.25),  # pointnet2 before its prefix
    "bert": (7.0, 0.2),
}
# the families whose lambda the authors did not publish (see above)
LAMBDA_NOT_PUBLISHED = ("pointnet2", "pointnet", "dgcnn", "bert")


def paper_defaults(arch: str) -> tuple[float, float]:
    """(entropy weight lambda, knowledge-point threshold b) of the paper's
    recipe for an architecture name; for point-cloud and text models lambda is
    kdlens's choice (:data:`LAMBDA_NOT_PUBLISHED`, see the comment above)."""
    for family, values in _FAMILY_DEFAULTS.items():
        if arch.lower().startswith(family):
            return values
    raise UsageError(
        f"arch = {arch!r}: the paper's recipe has lambda and b for "
        f"{', '.join(f + '*' for f in _FAMILY_DEFAULTS)} only; "
        "pass entropy_weight and threshold explicitly (kdlens analyze --entropy-weight ... --threshold ...)"
    )


def paper_discarding(
    model: nn.Module,
    inputs: Tensor,
    layer: str | None,
    units: Tensor,
    *,
    entropy_weight: float = 7.0,
    generator: torch.Generator | None = None,
    seed: int = 0,
    sample_seeds: Sequence[int] | None = None,
    progress: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> DiscardingResult:
    """The authors' sigma for every sample of ``inputs``; see the module doc.

    Randomness: first the delta_f^2 draw (96, B, ...), then one draw (96, B, ...)
    per step for all 80 steps, from ``generator`` or one seeded with ``seed``.
    With ``sample_seeds`` (one per sample) each sample draws its own 96 copies
    from its own generator instead, first for delta_f^2 and then for each step
    it runs, as the authors' one-image script does; its sigma is then that of
    a run on it alone (:class:`~kdlens.explain.common.NoiseStreams`).
    At most ``max_batch`` noisy inputs go through the model at once.
    """
    check_number("entropy_weight", entropy_weight)
    check_count("max_batch", max_batch)
    x = check_inputs(inputs)
    batch = x.shape[0]
    layout = UnitMap(units.to(x.device), x.shape)
    n = layout.n
    streams = NoiseStreams(x, generator, seed, sample_seeds)
    low, high = SIGMA_BOUNDS

    def expand(sigma: Tensor, rows: Tensor | None = None) -> Tensor:  # (b, n) -> (b, *sample_shape)
        return layout.spread(sigma, rows)

    def mse(x: Tensor, scale: Tensor, noise: Tensor, f0: Tensor, weights: Tensor | None = None) -> Tensor:
        """Per sample, the mean over copies and feature elements; with ``weights``
        the gradient of their weighted sum accumulates behind ``scale``."""
        totals = noisy_distances(f, x, scale, noise, f0, max_batch, reduce="mean", transform=torch.relu,
                                 weights=None if weights is None else weights / noise.shape[0])
        return totals / noise.shape[0]

    with frozen_feature(model, layer) as f:
        with torch.no_grad():
            f0 = torch.relu(forward_in_chunks(f, x, max_batch)).reshape(batch, -1)
            start = torch.full((batch, n), SIGMA_INIT, dtype=x.dtype, device=x.device)
            df2 = mse(x, expand(start), streams.draw(NOISY_COPIES), f0)
        reasons = invalid_reasons(f0, df2)
        valid = torch.tensor([r is None for r in reasons], device=x.device)

        sigma = start.clone()
        iterates = torch.zeros((STEPS, batch, n), dtype=x.dtype, device=x.device)
        entropy = torch.full((STEPS, batch), math.nan, dtype=torch.float64, device=x.device)
        history = torch.full((STEPS, batch), math.inf, dtype=torch.float64, device=x.device)
        weight = torch.full((batch,), float(entropy_weight), dtype=x.dtype, device=x.device)
        active = valid.clone()
        steps_iter = range(STEPS)
        if progress:
            from tqdm.auto import tqdm

            steps_iter = tqdm(steps_iter, desc="information discarding (paper)", leave=False)
        for step in steps_iter:
            idx = active.nonzero().squeeze(1)
            if len(idx) == 0:  # every sample has stopped: no later step can change the answer
                break
            # one generator: drawn for all, so a sample's draws do not depend on who has stopped;
            # one per sample: each running sample's own draw
            noise = streams.draw(NOISY_COPIES, idx) if streams.per_sample else streams.draw(NOISY_COPIES)[:, idx]
            s = nn.Parameter(sigma[idx].clamp(low, high))
            iterates[step, idx] = s.detach()
            h = layout.mean(s.log(), idx) + HALF_LOG_2PIE
            # the feature term's gradient accumulates chunk by chunk on a detached copy of the
            # expanded sigma, then is carried back to s together with the entropy term's
            expanded = expand(s, idx)
            scale = expanded.detach().requires_grad_(True)
            feature_term = mse(x[idx], scale, noise, f0[idx], weights=1.0 / df2[idx])
            torch.autograd.backward([expanded, -(weight[idx] * h).sum()], [scale.grad, None])
            loss = feature_term / df2[idx] - weight[idx] * h.detach()
            with torch.no_grad():
                sigma[idx] = s - LR * s.grad
            entropy[step, idx] = h.detach().double()
            history[step, idx] = loss.detach().double()
            if step == CHECK_STEP:
                reached = entropy[: CHECK_STEP + 1].nan_to_num(-math.inf).amax(0) > ENTROPY_TARGET
                weight = torch.where(reached, weight, weight * WEIGHT_GROWTH)
                active = active & ~reached

    ran = ~torch.isnan(entropy)  # (steps, B)
    distance = torch.where(ran, (entropy - ENTROPY_TARGET).abs(), torch.full_like(entropy, math.inf))
    chosen = distance.argmin(0)  # first minimum
    columns = torch.arange(batch, device=x.device)
    kept = iterates[chosen, columns]
    kept = torch.where(valid[:, None], kept, start)
    reached = entropy.nan_to_num(-math.inf).amax(0) > ENTROPY_TARGET
    final = torch.where(valid, history[chosen, columns], torch.full_like(history[0], math.inf))
    return DiscardingResult(
        sigma=layout.absent_as_nan(kept),
        entropy=layout.absent_as_nan(kept.log() + HALF_LOG_2PIE),
        feature_variance=df2.to(x.dtype),
        final_loss=final.to(x.dtype),
        converged=valid & reached,
        valid=valid,
        invalid_reason=reasons,
        loss_history=history.to(x.dtype),
        estimator="paper",
    )
