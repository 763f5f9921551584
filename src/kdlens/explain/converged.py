"""kdlens's own estimator of information discarding: a converged optimum of Eq. 4.

For each sample x we learn per-unit noise scales sigma that make
x' = x + sigma o delta, delta ~ N(0, I), as uncertain as possible while the
feature f(x') of a layer stays close to f* = f(x):

    Loss(sigma) = E_delta ||f(x') - f*||^2 / delta_f^2  -  alpha * mean_u H_u        (Eq. 4)
    H_u = log sigma_u + 1/2 log(2 pi e)                                              (Eq. 2)
    delta_f^2 = E_delta ||f(x + tau delta) - f*||^2                                   (Sec. 3.1)

Unlike the authors' recipe (``paper.py``), which stops at a fixed mean
entropy after 60-80 small SGD steps, this estimator runs to the optimum, so
its answer depends neither on the step budget nor on the seed (up to
Monte-Carlo noise). Conventions (the paper leaves them open):

* sigma is shared by all elements of a unit (see ``units``) and learned as
  log sigma: positivity for free, and Adam's steps are relative changes of sigma,
  which makes them independent of the input's scale.
* sigma is bounded above by ``sigma_max`` (1 by default: the unit of the
  normalised input, where noise is as large as the data's own spread and the
  unit's content is gone). A unit the feature ignores entirely has no
  optimum of Eq. 4: its log sigma would grow by up to lr a step for ever, so
  its entropy would measure the step budget. With the bound it stops at
  sigma_max, and the optimum of the bounded problem exists.
* The entropy term is the MEAN of H_u over units, not the sum of Eq. 3, so
  alpha means the same for a 4x4 or a 16x16 grid.  For a linear f(x) = W x the
  optimum is sigma_u^2 = alpha delta_f^2 / (2 n sum_{i in u} ||W_:,i||^2) (n units),
  and the feature term there equals alpha / 2: alpha is the allowed feature
  change E||f(x') - f*||^2 in units of delta_f^2 / 2.
* delta_f^2 is estimated once per sample, before optimisation, from
  ``variance_samples`` draws at the fixed scale tau (the paper's limit tau -> 0
  is replaced by a small tau, in the units of the normalised input).
* Samples are independent; the batch is optimised together (the sum of the
  per-sample losses) with ``noise_samples`` draws of delta per sample per step,
  i.e. B * noise_samples noisy inputs per step, forwarded at most
  ``max_batch`` at a time (default 128: a 16-image x 8-draw step is one
  forward) with their gradients accumulated; the draws are the same whatever
  ``max_batch``, so only the memory and not the result depends on it (see
  ``common.py`` for the bound). The delta_f^2 draws are chunked the same way.
* Adam's learning rate stays at ``lr`` for the first half of the steps, then
  falls along a half cosine to lr / 20: the first half travels, the second
  settles, so the Monte-Carlo jitter of the last iterates shrinks with the lr.
  The reported sigma is exp of the mean of log sigma over the last 20 % of the
  steps (Polyak-Ruppert averaging); ``final_loss`` is the mean loss there.
* ``converged`` says the mean loss of the last 10 % of steps moved from the
  10 % before by less than ``tol * max(|loss|, alpha)`` plus two standard
  errors of the difference (the loss is a Monte-Carlo estimate; the floor
  alpha because the loss crosses 0, and a change of tol * alpha is a change
  of tol in mean log sigma).
* A sample whose feature does not respond to noise (delta_f^2 == 0 or not
  finite, e.g. dead ReLUs) has no defined loss: it is left out of the
  optimisation, ``valid`` is False with a reason, its sigma is its initial
  value, its entropy the matching finite value, and its final_loss +inf.
  Nothing is NaN; callers must check ``valid``.

Defaults: alpha=2 makes sigma = tau the optimum of a model equally sensitive to
all units, so sigma starts at tau (=0.1, a tenth of a normalised input's std,
small enough that delta_f^2 is a local quantity) and log(sigma_u / tau) says
how much more or less than average unit u is discarded.  Adam with lr=0.05 on
log sigma moves sigma by up to ~5% a step: the first 150 of 300 steps cover a
factor e^7.5, more than the distance from tau to sigma_max.  For a warm start
(``init_sigma``) pass fewer steps and a smaller lr: Adam's first steps have
size ~lr whatever the gradient.
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

FINAL_LR_SHARE = 0.05  # the lr at the last step, as a share of lr
AVERAGED_SHARE = 0.2  # the share of the last steps whose log sigma is averaged


def learning_rate(step: int, steps: int, lr: float) -> float:
    """lr for the first half, then a half cosine down to FINAL_LR_SHARE * lr at the last step."""
    half = steps // 2
    if step < half or steps - half <= 1:
        return lr
    t = (step - half) / (steps - half - 1)
    return lr * (FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * t)))


def converged_discarding(
    model: nn.Module,
    inputs: Tensor,
    layer: str | None,
    units: Tensor,
    *,
    alpha: float = 2.0,
    tau: float = 0.1,
    sigma_max: float = 1.0,
    steps: int = 300,
    lr: float = 0.05,
    noise_samples: int = 8,
    variance_samples: int = 32,
    tol: float = 0.01,
    init_sigma: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    sample_seeds: Sequence[int] | None = None,
    progress: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> DiscardingResult:
    """Learn per-unit noise scales sigma for every sample of ``inputs`` (Eq. 4); see the module doc.

    ``layer``: a stage name of a ``NamedLayerModel``, a module name from
    ``model.named_modules()``, or None for the model's output.  ``units``: a
    unit map broadcastable to one sample, or one per sample (``units.UnitMap``).  ``init_sigma``
    (B, n_units) warm-starts from earlier sigmas.  Randomness comes only from
    ``generator``, or else a generator seeded with ``seed``, or with
    ``sample_seeds`` from one generator per sample, so that a sample's answer
    does not depend on the other samples of its batch (``NoiseStreams``). At most
    ``max_batch`` noisy inputs go through the model at once; the result does
    not depend on it (up to float rounding), the memory does.
    """
    for name, count in (("steps", steps), ("noise_samples", noise_samples), ("variance_samples", variance_samples),
                        ("max_batch", max_batch)):
        check_count(name, count)
    for name, value in (("alpha", alpha), ("tau", tau), ("lr", lr)):
        check_number(name, value)
    check_number("tol", tol, inclusive=True)
    if not (check_number("sigma_max", sigma_max) > tau):
        raise UsageError(f"sigma_max = {sigma_max!r}: expected a finite bound above tau = {tau!r}")
    x = check_inputs(inputs)
    batch = x.shape[0]
    layout = UnitMap(units.to(x.device), x.shape)
    n = layout.n
    log_max = math.log(sigma_max)
    if init_sigma is None:
        log_init = torch.full((batch, n), math.log(tau), dtype=x.dtype, device=x.device)
    else:
        if tuple(init_sigma.shape) == (batch, n) and not layout.shared:  # a unit a sample lacks has no sigma
            init_sigma = torch.where(layout.present, init_sigma.to(layout.present.device), tau)
        if tuple(init_sigma.shape) != (batch, n):
            raise UsageError(f"init_sigma has shape {tuple(init_sigma.shape)}; expected {(batch, n)} (samples, units)")
        if not bool(torch.isfinite(init_sigma).all() and (init_sigma > 0).all()):
            raise UsageError("init_sigma holds values that are not finite or not > 0; expected finite sigmas > 0")
        log_init = init_sigma.detach().to(x).log().clamp(max=log_max)
    streams = NoiseStreams(x, generator, seed, sample_seeds)

    with frozen_feature(model, layer) as f:
        with torch.no_grad():
            f0 = forward_in_chunks(f, x, max_batch).reshape(batch, -1)
            sq = torch.zeros(batch, dtype=torch.float64, device=x.device)
            inside = layout.element_mask()
            tau_scale = tau if inside is None else tau * inside.to(x.dtype)
            for start in range(0, variance_samples, noise_samples):
                s = min(noise_samples, variance_samples - start)
                sq += noisy_distances(f, x, tau_scale, streams.draw(s), f0, max_batch).double()
            df2 = sq / variance_samples
        reasons = invalid_reasons(f0, df2)
        valid = torch.tensor([r is None for r in reasons], device=x.device)

        log_sigma = log_init.clone()
        history = torch.full((steps, batch), math.inf, dtype=torch.float64, device=x.device)
        averaged = max(1, round(steps * AVERAGED_SHARE))
        idx = valid.nonzero().squeeze(1)
        if len(idx):
            xv, f0v, df2v = x[idx], f0[idx], df2[idx].to(x.dtype)
            param = nn.Parameter(log_init[idx].clone())
            opt = torch.optim.Adam([param], lr=lr)
            log_sum = torch.zeros_like(param, dtype=torch.float64)
            steps_iter = range(steps)
            if progress:
                from tqdm.auto import tqdm

                steps_iter = tqdm(steps_iter, desc="information discarding", leave=False)
            weights = 1.0 / (df2v * noise_samples)
            for step in steps_iter:
                sigma_el = layout.spread(param.exp(), idx)
                # the feature term's gradient is accumulated on a detached copy of sigma chunk by
                # chunk, then carried back to log sigma in one step
                scale = sigma_el.detach().requires_grad_(True)
                noise = streams.draw(noise_samples, idx)
                opt.zero_grad(set_to_none=True)
                dist = noisy_distances(f, xv, scale, noise, f0v, max_batch, weights=weights) / noise_samples
                entropy_term = alpha * (layout.mean(param, idx) + HALF_LOG_2PIE)
                torch.autograd.backward([sigma_el, -entropy_term.sum()], [scale.grad, None])
                loss = dist / df2v - entropy_term.detach()
                # record the loss of the sigma that produced it, then step
                history[step, idx] = loss.detach().double()
                if step >= steps - averaged:
                    log_sum += param.detach().double()
                for group in opt.param_groups:
                    group["lr"] = learning_rate(step, steps, lr)
                opt.step()
                with torch.no_grad():
                    param.clamp_(max=log_max)
            log_sigma[idx] = (log_sum / averaged).to(x.dtype)

    window = max(1, steps // 10)
    last, before = history[-window:], history[-2 * window : -window]
    final = history[-averaged:].mean(0)
    with torch.no_grad():
        if steps >= 2 * window:
            change = (last.mean(0) - before.mean(0)).abs()
            noise = (last.var(0, correction=0) / window + before.var(0, correction=0) / window).sqrt()
        else:
            change = noise = torch.full_like(final, math.inf)
        limit = tol * torch.clamp(final.abs(), min=alpha) + 2 * noise
        converged = valid & torch.isfinite(change) & (change <= limit)
        bad = valid & ~(torch.isfinite(final) & torch.isfinite(log_sigma).all(1))
        for b in bad.nonzero().squeeze(1).tolist():
            reasons[b] = "optimisation diverged (non-finite loss or sigma)"
        if bad.any():
            valid, converged = valid & ~bad, converged & ~bad
            log_sigma[bad] = log_init[bad]
        final = torch.where(valid, final, torch.full_like(final, math.inf))
    return DiscardingResult(
        sigma=layout.absent_as_nan(log_sigma.exp()),
        entropy=layout.absent_as_nan(log_sigma + HALF_LOG_2PIE),
        feature_variance=torch.where(torch.isfinite(df2), df2, torch.full_like(df2, math.inf)).to(x.dtype),
        final_loss=final.to(x.dtype),
        converged=converged,
        valid=valid,
        invalid_reason=reasons,
        loss_history=history.to(x.dtype),
        estimator="converged",
    )
