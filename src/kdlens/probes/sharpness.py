"""Sharpness of a converged minimum: training loss under Gaussian weight noise.

The IE-KD paper (Huang et al., CVPR 2021, Sec. 4.7 "Generalization", Fig. 4c)
follows the protocol of Deep Mutual Learning (Zhang et al., CVPR 2018), after
the flat/sharp-minima view of Keskar et al. (ICLR 2017) and Chaudhari et al.
(Entropy-SGD): add Gaussian noise of growing scale to the parameters of a
trained model and watch the training loss. A flat minimum (better
generalisation) keeps its loss longer; a sharp one degrades fast. For each
noise scale sigma,

    L(sigma) = E_z [ (1/n) sum_i CE(f(x_i; theta + sigma * z), y_i) ],  z ~ N(0, I),

over every parameter tensor of the model (buffers such as BatchNorm running
statistics are not perturbed), the model in eval mode, estimated with
``draws`` noise draws; sigma = 0 is the unperturbed loss.

Our choices: the n samples are the first ``max_samples`` of the dataset; the
same ``draws`` noise directions z (from child seeds of a generator seeded with
``seed``) are reused at every sigma (common random numbers), so differences
between sigmas are not blurred by fresh noise; ``loss_std`` is the standard
deviation over the draws (n - 1 in the denominator; 0 for one draw or sigma =
0). Noise is drawn on the CPU, so a seed gives the same noise on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kdlens.errors import UsageError
from kdlens.probes._data import first_batches


def _check_sigmas(sigmas: Sequence[float]) -> list[float]:
    values = [float(s) for s in sigmas]
    if not values:
        raise UsageError("sigmas is empty: expected at least one noise scale")
    bad = [s for s in values if not (math.isfinite(s) and s >= 0)]
    if bad:
        raise UsageError(f"sigmas contains {bad}: expected finite noise scales >= 0")
    return values


@torch.no_grad()
def _mean_loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    total, count = 0.0, 0
    for images, labels in batches:
        total += F.cross_entropy(model(images), labels, reduction="sum").item()
        count += labels.numel()
    return total / count


def sharpness_curve(
    model: nn.Module,
    dataset: Dataset,
    sigmas: Sequence[float],
    *,
    draws: int = 3,
    max_samples: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Mean training cross-entropy under N(0, sigma^2) noise on every parameter.

    Returns one ``{"sigma", "loss_mean", "loss_std"}`` per sigma, in order.
    ``model`` must already be on ``device``; its parameters and train/eval mode
    are restored exactly afterwards, even if an error interrupts the sweep.
    The same ``seed`` gives the same curve.
    """
    values = _check_sigmas(sigmas)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise UsageError(f"draws = {draws!r}: expected an integer >= 1")
    # Cached once: every sigma and draw scores the same samples.
    batches = list(first_batches(dataset, max_samples, batch_size, device))
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    draw_seeds = torch.randint(0, 2**62, (draws,), generator=torch.Generator().manual_seed(seed)).tolist()
    was_training = model.training
    results: list[dict[str, float]] = []
    bar = tqdm(total=sum(1 if s == 0 else draws for s in values), desc="sharpness", disable=not progress)
    try:
        model.eval()
        for sigma in values:
            losses = []
            for draw_seed in [None] if sigma == 0 else draw_seeds:
                if draw_seed is not None:
                    generator = torch.Generator().manual_seed(draw_seed)
                    with torch.no_grad():
                        for p, original in zip(params, saved):
                            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                            p.copy_(original + sigma * noise.to(device=p.device, dtype=p.dtype))
                losses.append(_mean_loss(model, batches))
                bar.update()
            t = torch.tensor(losses, dtype=torch.float64)
            std = float(t.std()) if len(losses) > 1 else 0.0
            results.append({"sigma": sigma, "loss_mean": float(t.mean()), "loss_std": std})
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved):
                p.copy_(original)
        model.train(was_training)
        bar.close()
    return results
