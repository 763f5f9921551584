"""``kdlens compare --explain``: the knowledge points of every compared student.

The main paper explains one distillation (a student distilled from a layer
against a baseline trained from scratch). Here the same measurement runs over
a whole comparison: for one seed, the student of every method, the
independent student (the comparison's baseline), the teacher at its last
checkpoint and the teacher's architecture at its random initial weights are
measured at ``explain.layer`` on the same training images (drawn from the
students' training set), with the estimators of ``kdlens.explain``
(``analyze_store``). For each method it reports N_fg, N_bg, λ (Sec. 3.2),
D_mean, D_var (Eq. 8) and ρ (Eq. 9) beside its accuracy, and the three
hypotheses against the independent student, each metric decided on the
paired bootstrap interval over the images (``kdlens.report.tables``), as the
demo's report decides them.

Which checkpoints: a compared student trains all its layers every epoch, so
every checkpoint is a new point of its trajectory. ``explain.max_epochs``
(default 5: the initialisation, the last and three between, evenly spaced)
keeps the analysis within minutes on a CPU; D_mean, D_var and ρ are defined
over all epochs, so with thinning they are a coarse reading (the report says
so), and ``max_epochs: null`` measures every epoch.

The results are cached under ``OUT/analysis/`` like a run's, so a second
``--explain`` only reads them.
"""

from __future__ import annotations

from typing import Any

import torch

from kdlens.builders import build_network, resolve_device
from kdlens.compare.config import BASELINE, label_folder
from kdlens.compare.runner import Comparison
from kdlens.explain.analyze import (
    AnalysedSamples,
    AnalysisCache,
    AnalysisSettings,
    analysis_indices,
    analyze_store,
    summarize_role,
)
from kdlens.modalities import modality_of
from kdlens.report.tables import HYPOTHESES, compare_models, hypothesis_result


def explained_samples(comparison: Comparison, count: int, seed: int) -> AnalysedSamples:
    """``count`` fixed images of the students' training set (at the main rate)."""
    full = comparison.datasets[0]
    pool = getattr(comparison.train_set, "indices", range(len(full)))
    indices = analysis_indices(len(full), min(count, len(pool)), seed, pool)
    samples = [full[i] for i in indices]
    return AnalysedSamples(torch.stack([s.image for s in samples]), torch.stack([s.mask for s in samples]),
                           indices, modality_of(full))


def explain_comparison(comparison: Comparison, *, progress: bool = True) -> dict[str, Any]:
    """Knowledge points of every compared student of the explained seed, the
    teacher and the random initialisation; the per-method metrics and verdicts."""
    config, settings = comparison.config, comparison.config.explain
    seed = config.seeds[0] if settings.seed is None else settings.seed
    experiment = config.experiment(seed)
    analysis = AnalysisSettings(layer=settings.layer, estimator=settings.estimator, seed=seed)
    samples = explained_samples(comparison, settings.samples, seed)
    cache = AnalysisCache(comparison.run.root, analysis)
    device = resolve_device(config.device)
    common = dict(progress=progress, device=device)

    summaries: dict[str, dict] = {}
    for entry in config.methods:
        model = build_network(config.model, experiment, comparison.num_classes, init="student")
        role = f"students/{label_folder(entry.title)}/seed{seed}"
        result = analyze_store(comparison.student_store(entry, seed), model, samples, analysis, cache, role=role,
                               arch=config.model.arch, model_name=f"the {entry.title} student of seed {seed}",
                               max_epochs=settings.max_epochs, **common)
        summaries[entry.title] = summarize_role(result, analysis)

    references: dict[str, dict] = {}
    if comparison.teacher is not None:
        store = comparison.run.role("teacher")
        for name, epoch in (("Teacher", store.latest()), ("Random", 0)):
            model = build_network(config.teacher_model, config.experiment(config.seeds[0]), comparison.num_classes,
                                  init="teacher")
            result = analyze_store(store, model, samples, analysis, cache, role="teacher", epochs=[epoch],
                                   arch=config.teacher_model.arch, model_name="the teacher", **common)
            references[name] = summarize_role(result, analysis)
            references[name]["accuracy"] = result.test_accuracy[0]  # of that checkpoint, not the last

    baseline = next(e.title for e in config.methods if e.name == BASELINE)
    verdicts = {}
    for title, summary in summaries.items():
        if title == baseline:
            continue
        comparisons = compare_models({"student": summary, "baseline": summaries[baseline]})
        verdicts[title] = {h: hypothesis_result(h, settings.layer, settings.estimator, comparisons) for h in HYPOTHESES}
    return {
        "layer": settings.layer, "estimator": settings.estimator, "seed": seed, "samples": len(samples.indices),
        "indices": samples.indices, "max_epochs": settings.max_epochs, "baseline": baseline,
        "foreground_known": bool(getattr(comparison.datasets[0], "has_foreground_masks", True)),
        "methods": summaries, "references": references, "verdicts": verdicts,
    }

