"""The IE-KD paper's analysis tools (sec. 4.7) on a finished comparison's
first-seed models:

- LRP relevance heatmaps (Fig. 1, 3): the teacher, the independent student,
  the KD student and the IE-KD student with the lowest mean test error, whole
  and through its inheritance and its exploration channels only;
- CKA between the inheritance and the exploration channels (Fig. 4a), of each
  IE-KD student and of the independent student split the same way;
- the number of active neurons (Fig. 4b) of the teacher, the independent
  student and each IE-KD student (all channels and the inheritance part);
- the sharpness of every student's minimum (Fig. 4c): training loss as
  Gaussian noise of growing scale is added to the weights.

All on the same fixed training images (the first ``analysis.samples`` of the
student's training set) and test images (the first ``relevance_images``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from kdlens.builders import resolve_device
from kdlens.compare.config import BASELINE
from kdlens.compare.runner import Comparison, seed_models
from kdlens.data import denormalize
from kdlens.probes import active_neurons, channel_split_cka, relevance_maps, sharpness_curve


def _mean_error(comparison: Comparison, title: str) -> float:
    rows = comparison.results.get(title, {}).values()
    return sum(r["test_error"] for r in rows) / len(rows) if rows else float("inf")


def _split(method_state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    permutation, k = method_state["permutation"], int(method_state["split"])
    return permutation[:k], permutation[k:]


@torch.no_grad()
def _feature(model, images: torch.Tensor, layer: str, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.forward_to(images[i:i + batch_size], layer) for i in range(0, len(images), batch_size)])


def analyze_comparison(comparison: Comparison, *, progress: bool = True) -> Optional[dict[str, Any]]:
    config = comparison.config
    settings = config.analysis
    device = resolve_device(config.device)
    models = seed_models(comparison)
    for model, _ in models.values():
        model.to(device)
    teacher = comparison.teacher
    if teacher is None:
        return None  # only the independent student: nothing to explain
    teacher.to(device).eval()
    baseline = next(e.title for e in config.methods if e.name == BASELINE)
    ie_entries = [e for e in config.methods if e.ie_variant_of is not None]
    kd_entries = [e for e in config.methods if e.name == "kd"]

    train_set = comparison.train_set
    samples = Subset(train_set, range(min(settings.samples, len(train_set))))
    images = torch.stack([samples[i].image for i in range(len(samples))]).to(device)
    out: dict[str, Any] = {"seed": config.seeds[0], "samples": len(samples), "layer": config.layer,
                           "cka": {}, "active_neurons": {}, "sharpness": {}}
    steps = len(ie_entries) + len(models) + 2
    bar = tqdm(total=steps, desc="analysis", disable=not progress, dynamic_ncols=True)

    # Fig. 4(a) and 4(b): per IE-KD student, with its split applied to the
    # independent student too (same initialisation seed, as in the paper).
    neurons = out["active_neurons"]
    neurons["Teacher"] = active_neurons(teacher, config.layer, samples, energy=settings.energy,
                                        max_samples=len(samples), device=device).count
    base_model = models[baseline][0]
    neurons[baseline] = active_neurons(base_model, config.layer, samples, energy=settings.energy,
                                       max_samples=len(samples), device=device).count
    for entry in ie_entries:
        layer = entry.resolved_layer(config.layer)
        model, state = models[entry.title]
        inherit, explore = _split(state)
        if len(inherit) and len(explore):
            out["cka"][entry.title] = {
                "independent": channel_split_cka(_feature(base_model, images, layer), inherit, explore),
                "ie": channel_split_cka(_feature(model, images, layer), inherit, explore),
            }
        counts = {"all": active_neurons(model, layer, samples, energy=settings.energy,
                                        max_samples=len(samples), device=device).count}
        if len(inherit):
            counts["inheritance"] = active_neurons(model, layer, samples, channels=inherit, energy=settings.energy,
                                                   max_samples=len(samples), device=device).count
            counts["independent_inheritance"] = active_neurons(
                base_model, layer, samples, channels=inherit, energy=settings.energy,
                max_samples=len(samples), device=device).count
        neurons[entry.title] = counts
        bar.update()

    # Fig. 4(c): every student, the same noise draws for all.
    for title, (model, _) in models.items():
        out["sharpness"][title] = sharpness_curve(model, samples, settings.sharpness_sigmas,
                                                  draws=settings.sharpness_draws, max_samples=len(samples),
                                                  seed=config.seeds[0], device=device)
        bar.update()

    # Fig. 1 and 3: relevance heatmaps on the first test images.
    test = comparison.datasets[1]
    count = min(settings.relevance_images, len(test))
    if count:
        batch = torch.stack([test[i].image for i in range(count)]).to(device)
        labels = torch.tensor([int(test[i].label) for i in range(count)])
        maps: dict[str, torch.Tensor] = {"Teacher": relevance_maps(teacher, batch).cpu()}
        predictions: dict[str, list[int]] = {"Teacher": teacher(batch).argmax(1).tolist()}
        for title in [baseline, *(e.title for e in kd_entries)]:
            maps[title] = relevance_maps(models[title][0], batch).cpu()
            predictions[title] = models[title][0](batch).argmax(1).tolist()
        if ie_entries:
            entry = min(ie_entries, key=lambda e: _mean_error(comparison, e.title))
            model, state = models[entry.title]
            inherit, explore = _split(state)
            layer = entry.resolved_layer(config.layer)
            maps[entry.title] = relevance_maps(model, batch).cpu()
            predictions[entry.title] = model(batch).argmax(1).tolist()
            if len(inherit):
                maps[f"{entry.title} inh."] = relevance_maps(model, batch, layer=layer, channels=inherit).cpu()
            if len(explore):
                maps[f"{entry.title} exp."] = relevance_maps(model, batch, layer=layer, channels=explore).cpu()
        out["relevance"] = {
            "images": denormalize(batch.cpu(), test.mean, test.std).clamp(0, 1),
            "labels": labels.tolist(),
            "classes": list(test.classes),
            "maps": maps,
            "predictions": predictions,
        }
    bar.update(2)
    bar.close()
    return out
