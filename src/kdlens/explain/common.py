"""What both estimators of information discarding share: the result type, the
feature f(x) of a layer, noise draws, a model frozen for the measurement, the
checks of their arguments, and the chunked forward that bounds their memory.

Memory bound: an estimator step forwards B samples x S noise draws (S = 8
for "converged", 96 for "paper"). :func:`noisy_distances` sends at most
``max_batch`` of those B * S noisy inputs through the model at once and
back-propagates each chunk before the next, accumulating the gradients, so
the activations held at any time are those of one forward and backward of
``max_batch`` inputs up to the measured layer (plus the step's noise draws,
B * S input-sized tensors, drawn at once for the whole batch). The noise is
drawn exactly as without chunking and only split afterwards, so the result
does not depend on ``max_batch`` beyond float rounding (which the converged
estimator's Adam can amplify near the optimum: measured up to 0.002 nats of
entropy after 300 steps on a small VGG, against 0.13 between two seeds).
Lower ``max_batch`` when a step runs out of memory; very small chunks cost
time (per-forward overhead), not accuracy.
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from kdlens.errors import UnknownNameError, UsageError
from kdlens.explain.batch_norm_folding import fold_batch_norms
from kdlens.models.base import NamedLayerModel

HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)


# Inputs forwarded at once: a 16-image x 8-draw step of the converged
# estimator is one forward, as it was before chunking.
DEFAULT_MAX_BATCH = 128


def check_number(name: str, value, *, minimum: float = 0.0, inclusive: bool = False) -> float:
    """``value`` as a float if it is finite and > ``minimum`` (>= with
    ``inclusive``), else a :class:`UsageError` naming ``name`` and the value."""
    bound = f"{'>=' if inclusive else '>'} {minimum:g}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and (number >= minimum if inclusive else number > minimum)):
        raise UsageError(f"{name} = {value!r}: expected a finite number {bound}")
    return number


def check_count(name: str, value) -> int:
    """``value`` if it is an integer >= 1, else a :class:`UsageError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UsageError(f"{name} = {value!r}: expected an integer >= 1")
    return int(value)


def check_inputs(inputs) -> Tensor:
    """``inputs`` detached, after checking it is a floating-point batch (B, ...)
    of at least one sample, all finite."""
    if not isinstance(inputs, Tensor):
        raise UsageError(f"inputs is a {type(inputs).__name__}; expected a tensor (B, ...) of samples")
    if inputs.dim() == 0:
        raise UsageError("inputs is a 0-d tensor; expected a batch (B, ...) of at least 1 sample")
    if inputs.shape[0] == 0:
        raise UsageError(f"inputs has 0 samples (shape {tuple(inputs.shape)}); expected at least 1")
    if not inputs.is_floating_point():
        raise UsageError(f"inputs has dtype {inputs.dtype}; expected a floating-point tensor")
    finite = torch.isfinite(inputs.detach().reshape(inputs.shape[0], -1)).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().squeeze(1).tolist()
        raise UsageError(f"inputs holds NaN or infinite values in {len(bad)} of its {inputs.shape[0]} samples "
                         f"(first: sample {bad[0]}); expected finite inputs")
    return inputs.detach()


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
        if isinstance(model, NamedLayerModel):
            expected = f"a stage ({', '.join(model.stages)}) or a module name from named_modules()"
        elif len(modules) > 1:
            names = [n for n in modules if n]
            expected = "one of " + ", ".join(names[:12]) + (f", ... ({len(names)} modules)" if len(names) > 12 else "")
        else:
            expected = "None (the model's output): it has no submodules"
        raise UnknownNameError(f"layer = {layer!r}: {type(model).__name__} has no such layer; expected {expected}")
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


def forward_in_chunks(f: Callable[[Tensor], Tensor], x: Tensor, max_batch: int) -> Tensor:
    """``f(x)``, at most ``max_batch`` samples of ``x`` at a time (for frozen, eval-mode models)."""
    if len(x) <= max_batch:
        return f(x)
    return torch.cat([f(x[start : start + max_batch]) for start in range(0, len(x), max_batch)])


def noisy_distances(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    scale: Tensor | float,
    noise: Tensor,
    f0: Tensor,
    max_batch: int,
    *,
    reduce: Literal["sum", "mean"] = "sum",
    transform: Callable[[Tensor], Tensor] | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """(B,) detached: for each sample b, the sum over the S draws of ``noise``
    (S, B, *sample_shape) of the distance between g(f(x_b + scale_b o delta))
    and ``f0[b]`` (B, F), where the distance is the squared norm (``reduce``
    "sum") or the mean squared difference per feature element ("mean") and g
    is ``transform`` or the identity. ``scale``: (B, *sample_shape) or a number.

    The S * B noisy inputs are forwarded at most ``max_batch`` at a time (draw
    s of sample b is row s * B + b). With ``weights`` (B,), the gradient of
    sum_b weights_b * distance_b is back-propagated chunk by chunk, so it
    accumulates in the ``.grad`` of the leaf tensors behind ``scale``.
    """
    draws, batch = noise.shape[0], noise.shape[1]
    rows_total = draws * batch
    flat = noise.reshape(rows_total, *noise.shape[2:])
    totals = torch.zeros(batch, dtype=f0.dtype, device=f0.device)
    for start in range(0, rows_total, max_batch):
        stop = min(start + max_batch, rows_total)
        owner = torch.arange(start, stop, device=x.device) % batch
        step = scale[owner] if isinstance(scale, Tensor) else scale
        noisy = x[owner] + step * flat[start:stop]
        if noisy.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            noisy = noisy.contiguous(memory_format=torch.channels_last)  # as the inputs (and the model) are
        feature = f(noisy).reshape(stop - start, -1)
        if transform is not None:
            feature = transform(feature)
        squared = (feature - f0[owner]) ** 2
        distance = squared.sum(1) if reduce == "sum" else squared.mean(1)
        if weights is not None:
            (distance * weights[owner]).sum().backward()
        totals.index_add_(0, owner, distance.detach())
    return totals


def randn(shape, generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal draws from ``generator`` (on its device), moved to ``like``'s device and dtype."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


class NoiseStreams:
    """Where an estimator's noise draws come from.

    Either one generator for the whole batch (``generator``, or one seeded with
    ``seed``): a draw for B samples is one tensor (S, B, *sample_shape), so a
    sample's noise depends on its place in the batch and on the batch's size.
    Or one generator per sample, seeded with ``sample_seeds[b]``: sample b's
    draws are those of a run on sample b alone with ``sample_seeds=[seed_b]``,
    whatever else shares its batch, its chunk or its shard. The analysis of a
    run uses the second, so that its answers equal a one-sample-at-a-time run.
    """

    def __init__(self, like: Tensor, generator: torch.Generator | None = None, seed: int = 0,
                 sample_seeds: Sequence[int] | None = None) -> None:
        self.like = like
        self.generators: list[torch.Generator] | None = None
        if sample_seeds is not None:
            seeds = list(sample_seeds)
            if generator is not None:
                raise UsageError("generator and sample_seeds were both given; expected one source of noise")
            if len(seeds) != like.shape[0] or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                                      for s in seeds):
                raise UsageError(f"sample_seeds = {seeds[:4]}{'...' if len(seeds) > 4 else ''} ({len(seeds)} "
                                 f"values): expected one integer seed per sample ({like.shape[0]})")
            self.generators = [torch.Generator(like.device).manual_seed(int(s)) for s in seeds]
        else:
            self.generator = generator if generator is not None else torch.Generator(like.device).manual_seed(seed)

    @property
    def per_sample(self) -> bool:
        return self.generators is not None

    def draw(self, copies: int, rows: Tensor | None = None) -> Tensor:
        """(copies, R, *sample_shape) standard normal draws for the samples ``rows`` (default: all).
        One generator: a single draw for R samples. One per sample: each row's own."""
        sample_shape = tuple(self.like.shape[1:])
        picked = range(self.like.shape[0]) if rows is None else rows.tolist()
        if self.generators is None:
            return randn((copies, len(picked), *sample_shape), self.generator, self.like)
        return torch.stack([randn((copies, *sample_shape), self.generators[b], self.like) for b in picked], dim=1)


@contextmanager
def deterministic():
    """Deterministic algorithms while an estimator runs (the caller's setting
    restored after). On a 2-core CPU two runs of the converged estimator on the
    same model, inputs and seeds differed by up to 0.11 in log sigma with the
    default multi-threaded kernels, enough to flip knowledge points at the
    threshold; with deterministic algorithms they are equal, at no cost in
    speed there. ``warn_only``: an operation without a deterministic version
    (some CUDA kernels) warns instead of failing."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


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


@contextmanager
def frozen_feature(model: nn.Module, layer: str | None):
    """f(x) of ``layer`` for a measurement: the model frozen (:func:`frozen`) for the
    block, and f computed by a copy with its batch norms folded
    (``batch_norm_folding``) when it has any. A bad layer name fails first."""
    feature_fn(model, layer)
    with frozen(model):
        yield feature_fn(fold_batch_norms(model), layer)


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
