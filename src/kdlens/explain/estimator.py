"""Pixel-wise information discarding (Sec. 3.1, Eq. 1-4) behind one call.

Two estimators of the same quantity, the entropy H_u = log sigma_u + 1/2 log(2 pi e)
of the largest input noise that leaves a layer's feature unchanged:

* ``"converged"`` (default, ``converged.py``): kdlens's optimum of Eq. 4,
  independent of the step budget and the seed; its knowledge points use a
  threshold relative to the spread of the background entropies.
* ``"paper"`` (``paper.py``): the authors' released recipe, exactly; its
  knowledge points use the paper's fixed b (0.2, 0.25 for AlexNet).
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from kdlens.explain.common import HALF_LOG_2PIE, DiscardingResult, deterministic
from kdlens.explain.converged import converged_discarding
from kdlens.explain.paper import paper_discarding
from kdlens.errors import UsageError, WrongTypeError

ESTIMATORS = {"converged": converged_discarding, "paper": paper_discarding}

__all__ = ["ESTIMATORS", "HALF_LOG_2PIE", "DiscardingResult", "check_estimator", "information_discarding"]


def check_estimator(name: str) -> str:
    if name not in ESTIMATORS:
        raise UsageError(f"estimator = {name!r}: expected one of {', '.join(ESTIMATORS)}")
    return name


def information_discarding(
    model: nn.Module, inputs: Tensor, layer: str | None, units: Tensor, *, estimator: str = "converged", **options
) -> DiscardingResult:
    """Per-unit sigma and entropy of every sample of ``inputs`` at ``layer``.

    ``layer``: a stage name of a ``NamedLayerModel``, a module name from
    ``model.named_modules()``, or None for the model's output; ``units``: a
    unit map broadcastable to one sample, or one per sample (``units.UnitMap``). ``options`` are the
    chosen estimator's keywords (see :func:`converged_discarding` and
    :func:`paper_discarding`); one it does not take is an error that names them.
    Bad arguments (an empty or non-finite batch, a non-finite or out-of-range
    option) are a one-line :class:`~kdlens.errors.UsageError`. Both estimators
    take ``max_batch``, the most noisy inputs forwarded at once (the memory
    bound; the result does not depend on it).
    """
    function = ESTIMATORS[check_estimator(estimator)]
    accepted = [p for p in inspect.signature(function).parameters if p not in ("model", "inputs", "layer", "units")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise WrongTypeError(
            f"estimator {estimator!r} takes no option {unknown[0]!r}; expected one of {', '.join(accepted)}"
        )
    with deterministic():  # the same model, inputs and seeds give the same answer (see common.deterministic)
        return function(model, inputs, layer, units, **options)
