"""What both estimators of information discarding share: the result type, the
feature f(x) of a layer, noise draws, and a model frozen for the measurement."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdlens.models.base import NamedLayerModel

HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)


@dataclass
class DiscardingResult:
    """Per-sample results of ``information_discarding``; check ``valid`` before use."""

    sigma: Tensor  # (B, n_units)
    entropy: Tensor  # (B, n_units) = log sigma + 1/2 log(2 pi e)
    feature_variance: Tensor  # (B,) delta_f^2
    final_loss: Tensor  # (B,) the loss of the reported sigma; +inf when invalid
    converged: Tensor  # (B,) bool; what it means is the estimator's (see its module)
    valid: Tensor  # (B,) bool
    invalid_reason: list[str | None] = field(default_factory=list)
    loss_history: Tensor | None = None  # (steps, B); +inf where a sample was not optimised
    estimator: str = "converged"


class _StopForward(Exception):
    pass


def feature_fn(model: nn.Module, layer: str | None):
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


def randn(shape, generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal draws from ``generator`` (on its device), moved to ``like``'s device and dtype."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


@contextmanager
def frozen(model: nn.Module):
    """The model in eval mode with no parameter gradients; restored as it was afterwards."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in grads:
        p.requires_grad_(False)  # gradients flow to sigma only
    try:
        yield model
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode


def invalid_reasons(f0: Tensor, feature_variance: Tensor) -> list[str | None]:
    """Why each sample's loss is undefined (None where it is defined)."""
    finite_f0 = torch.isfinite(f0.reshape(f0.shape[0], -1)).all(dim=1)
    reasons: list[str | None] = []
    for ok, df2 in zip(finite_f0.tolist(), feature_variance.tolist()):
        if not ok:
            reasons.append("feature f(x) is not finite")
        elif not math.isfinite(df2):
            reasons.append("feature variance under tau-noise is not finite")
        elif df2 <= 0:
            reasons.append("feature does not respond to input noise (delta_f^2 == 0, e.g. dead ReLUs)")
        else:
            reasons.append(None)
    return reasons
