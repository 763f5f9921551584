"""Pixel-wise information discarding, the engine of Sec. 3.1 (Eq. 1-4).

For each sample x we learn per-unit noise scales sigma that make
x' = x + sigma o delta, delta ~ N(0, I), as uncertain as possible while the
feature f(x') of a layer stays close to f* = f(x):

    Loss(sigma) = E_delta ||f(x') - f*||^2 / delta_f^2  -  alpha * mean_u H_u        (Eq. 4)
    H_u = log sigma_u + 1/2 log(2 pi e)                                              (Eq. 2)
    delta_f^2 = E_delta ||f(x + tau delta) - f*||^2                                   (Sec. 3.1)

Conventions (the paper leaves them open):

* sigma is shared by all elements of a unit (see ``units``) and learned as
  log sigma: positivity for free, and Adam's steps are relative changes of sigma,
  which makes them independent of the input's scale.
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
  i.e. one forward of B * noise_samples inputs per step.
* The reported sigma is exp of the mean of log sigma over the last 10% of the
  steps (Polyak-Ruppert averaging of the noisy Monte-Carlo iterates);
  ``final_loss`` is the mean loss over the same window.  ``converged`` says the
  mean loss of that window moved from the window before by less than
  ``tol * max(|loss|, alpha)`` plus two standard errors of the difference (the
  loss is a Monte-Carlo estimate; the floor alpha because the loss crosses 0,
  and a change of tol * alpha is a change of tol in mean log sigma).
* A sample whose feature does not respond to noise (delta_f^2 == 0 or not
  finite, e.g. dead ReLUs) has no defined loss: it is left out of the
  optimisation, ``valid`` is False with a reason, its sigma is its initial
  value, its entropy the matching finite value, and its final_loss +inf.
  Nothing is NaN; callers must check ``valid``.

Defaults: alpha=2 makes sigma = tau the optimum of a model equally sensitive to
all units, so sigma starts at tau (=0.1, a tenth of a normalised input's std,
small enough that delta_f^2 is a local quantity) and log(sigma_u / tau) says
how much more or less than average unit u is discarded.  Adam with lr=0.05 on
log sigma moves sigma by up to ~5% a step: 300 steps cover a factor e^15,
and the final averaging window removes most of the jitter that 8 noise draws
per step leave (on a small random-init CNN at 32x32 with a 16x16 grid, two
seeds give entropies that differ by 0.04 median, 0.1 at the 90th percentile,
against b = 0.2; raise ``noise_samples`` or ``steps`` for tighter values).
A unit the feature ignores entirely has no optimum: its log sigma grows by up
to lr a step, so its entropy reflects the step budget.  For a warm start
(``init_sigma``) pass a smaller lr: Adam's first steps have size ~lr whatever
the gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdlens.discarding.units import check_units
from kdlens.models.base import NamedLayerModel

HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)


@dataclass
class DiscardingResult:
    """Per-sample results of ``information_discarding``; check ``valid`` before use."""

    sigma: Tensor  # (B, n_units)
    entropy: Tensor  # (B, n_units) = log sigma + 1/2 log(2 pi e)
    feature_variance: Tensor  # (B,) delta_f^2
    final_loss: Tensor  # (B,) mean loss over the last window; +inf when invalid
    converged: Tensor  # (B,) bool
    valid: Tensor  # (B,) bool
    invalid_reason: list[str | None] = field(default_factory=list)
    loss_history: Tensor | None = None  # (steps, B); +inf columns for invalid samples


class _StopForward(Exception):
    pass


def _feature_fn(model: nn.Module, layer: str | None):
    """f(x): the output of ``layer``, computing nothing above it."""
    if layer is None:
        return model
    if isinstance(model, NamedLayerModel) and layer in model.stages:
        return lambda x: model.forward_to(x, layer)
    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(f"{type(model).__name__} has no module {layer!r}; expected one of {', '.join(n for n in modules if n)}")
    target = modules[layer]

    def run(x: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(output)
            raise _StopForward  # the layers above are never run

        handle = target.register_forward_hook(hook)
        try:
            model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"module {layer!r} was not called by {type(model).__name__}.forward")
        return captured[0]

    return run


def _randn(shape, generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def information_discarding(
    model: nn.Module,
    inputs: Tensor,
    layer: str | None,
    units: Tensor,
    *,
    alpha: float = 2.0,
    tau: float = 0.1,
    steps: int = 300,
    lr: float = 0.05,
    noise_samples: int = 8,
    variance_samples: int = 32,
    tol: float = 0.01,
    init_sigma: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool = False,
) -> DiscardingResult:
    """Learn per-unit noise scales sigma for every sample of ``inputs`` (Eq. 4); see the module doc.

    ``layer``: a stage name of a ``NamedLayerModel``, a module name from
    ``model.named_modules()``, or None for the model's output.  ``units``: a
    unit map broadcastable to one sample (``units.py``).  ``init_sigma``
    (B, n_units) warm-starts from earlier sigmas.  Randomness comes only from
    ``generator``, or else a generator seeded with ``seed``.
    """
    if steps < 1 or noise_samples < 1 or variance_samples < 1:
        raise ValueError("steps, noise_samples and variance_samples must be >= 1")
    if alpha <= 0 or tau <= 0 or lr <= 0:
        raise ValueError(f"alpha, tau and lr must be > 0, got {alpha}, {tau}, {lr}")
    x = inputs.detach()
    batch, sample_shape = x.shape[0], tuple(x.shape[1:])
    unit_map = check_units(units.to(x.device), sample_shape).reshape(-1)
    n = int(unit_map.max()) + 1
    if init_sigma is None:
        log_init = torch.full((batch, n), math.log(tau), dtype=x.dtype, device=x.device)
    else:
        if tuple(init_sigma.shape) != (batch, n):
            raise ValueError(f"init_sigma has shape {tuple(init_sigma.shape)}, expected {(batch, n)}")
        if not bool(torch.isfinite(init_sigma).all() and (init_sigma > 0).all()):
            raise ValueError("init_sigma must be finite and > 0")
        log_init = init_sigma.detach().to(x).log()
    gen = generator if generator is not None else torch.Generator(x.device).manual_seed(seed)
    f = _feature_fn(model, layer)

    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in grads:
        p.requires_grad_(False)  # gradients flow to sigma only
    try:
        with torch.no_grad():
            f0 = f(x).reshape(batch, -1)
            sq = torch.zeros(batch, dtype=torch.float64, device=x.device)
            for start in range(0, variance_samples, noise_samples):
                s = min(noise_samples, variance_samples - start)
                xp = (x.unsqueeze(0) + tau * _randn((s, *x.shape), gen, x)).reshape(s * batch, *sample_shape)
                sq += ((f(xp).reshape(s, batch, -1) - f0) ** 2).sum(-1).sum(0).double()
            df2 = sq / variance_samples
        finite_f0 = torch.isfinite(f0).all(dim=1)
        reasons: list[str | None] = []
        for b in range(batch):
            if not finite_f0[b]:
                reasons.append("feature f(x) is not finite")
            elif not torch.isfinite(df2[b]):
                reasons.append("feature variance under tau-noise is not finite")
            elif df2[b] <= 0:
                reasons.append("feature does not respond to input noise (delta_f^2 == 0, e.g. dead ReLUs)")
            else:
                reasons.append(None)
        valid = torch.tensor([r is None for r in reasons], device=x.device)

        log_sigma = log_init.clone()
        history = torch.full((steps, batch), math.inf, dtype=torch.float64, device=x.device)
        window = max(1, steps // 10)
        idx = valid.nonzero().squeeze(1)
        if len(idx):
            xv, f0v, df2v = x[idx], f0[idx], df2[idx].to(x.dtype)
            bv = len(idx)
            param = nn.Parameter(log_init[idx].clone())
            opt = torch.optim.Adam([param], lr=lr)
            log_sum = torch.zeros_like(param, dtype=torch.float64)
            steps_iter = range(steps)
            if progress:
                from tqdm.auto import tqdm

                steps_iter = tqdm(steps_iter, desc="information discarding", leave=False)
            for step in steps_iter:
                sigma_el = param.exp().index_select(1, unit_map).reshape(bv, *sample_shape)
                xp = (xv + sigma_el * _randn((noise_samples, *xv.shape), gen, xv)).reshape(-1, *sample_shape)
                dist = ((f(xp).reshape(noise_samples, bv, -1) - f0v) ** 2).sum(-1).mean(0)
                loss = dist / df2v - alpha * (param.mean(1) + HALF_LOG_2PIE)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                # record the loss of the sigma that produced it, then step
                history[step, idx] = loss.detach().double()
                if step >= steps - window:
                    log_sum += param.detach().double()
                opt.step()
            log_sigma[idx] = (log_sum / window).to(x.dtype)
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode

    last, before = history[-window:], history[-2 * window : -window]
    final = last.mean(0)
    with torch.no_grad():
        if steps >= 2 * window:
            change = (final - before.mean(0)).abs()
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
        sigma=log_sigma.exp(),
        entropy=log_sigma + HALF_LOG_2PIE,
        feature_variance=torch.where(torch.isfinite(df2), df2, torch.full_like(df2, math.inf)).to(x.dtype),
        final_loss=final.to(x.dtype),
        converged=converged,
        valid=valid,
        invalid_reason=reasons,
        loss_history=history.to(x.dtype),
    )
