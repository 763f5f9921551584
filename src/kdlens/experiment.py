"""The whole paper in one call: config -> train -> analyse -> report.

``run_experiment`` trains a teacher, a baseline and a student distilled from a
middle layer, measures the knowledge points of the student's and baseline's
checkpoints, the teacher's last and the teacher's random initial weights at the
distilled layer (or the layers given), with each estimator the config's
``analysis`` names, and writes the report. Every stage is resumable: training
resumes from the last checkpoint, the analysis from its per-checkpoint cache.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from kdlens.builders import build_datasets
from kdlens.config import ExperimentConfig, parse_config
from kdlens.data import denormalize
from kdlens.discarding.analyze import AnalysisSettings, analyze_run, role_points, sample_indices, summarize_role
from kdlens.train import train_roles

# The built-in data puts the class in the object only (no distractor of a
# class, a random background) and objects fill about a quarter of the image.
DEMO = {
    "seed": 0,
    "data": {"name": "synthetic", "image_size": 32, "num_classes": 6, "train_size": 6000,
             "test_size": 600, "distractors": 2, "student_fraction": 0.1},
    "model": {"arch": "vgg11", "width": 0.125, "dropout": 0.5, "linear_init": "pytorch"},
    "teacher": {"epochs": 10, "lr": 0.05},
    "baseline": {"epochs": 16, "lr": 0.05},
    "student": {"layer": "fc1", "distill": {"epochs": 12, "lr": 0.003}, "classify": {"epochs": 8, "lr": 0.05}},
    "analysis": {"estimators": ["converged", "paper"], "samples": 16, "grid": 16, "paper_final_only": True},
}
QUICK = {
    **DEMO,
    "data": {**DEMO["data"], "num_classes": 4, "train_size": 2000, "test_size": 400, "student_fraction": 0.25},
    "model": {**DEMO["model"], "width": 0.125},
    "teacher": {"epochs": 4, "lr": 0.05},
    "baseline": {"epochs": 4, "lr": 0.05},
    "student": {"layer": "fc1", "distill": {"epochs": 4, "lr": 0.003}, "classify": {"epochs": 3, "lr": 0.05}},
    "analysis": {"estimators": ["converged", "paper"], "samples": 4, "grid": 8, "paper_final_only": True},
}


def demo_config(quick: bool = False) -> ExperimentConfig:
    return parse_config(QUICK if quick else DEMO, source="demo" + (" --quick" if quick else ""))


def run_experiment(
    config: ExperimentConfig,
    out: str | Path,
    *,
    layers: Optional[list[str]] = None,
    settings: AnalysisSettings = AnalysisSettings(),
    split: str = "train",
    max_epochs: Optional[int] = None,
    title: str = "kdlens experiment",
    progress: bool = True,
) -> dict[str, Path]:
    """Train, analyse and report into ``out``; returns the report's files.

    ``settings`` holds the converged estimator's settings; the estimators, the
    grid, H_bar and the sample count come from ``config.analysis``."""
    from kdlens.report import write_report

    out = Path(out)
    plan = config.analysis
    layers = layers or [config.student.layer]
    began = time.perf_counter()
    datasets = build_datasets(config)
    run = train_roles(config, out / "run", progress=progress, datasets=datasets)
    trained = time.perf_counter()

    dataset = datasets[0] if split == "train" else datasets[1]
    indices = sample_indices(config, *datasets, plan.samples, split)
    images = denormalize(torch.stack([dataset[i].image for i in indices]), dataset.mean, dataset.std)
    masks = torch.stack([dataset[i].mask for i in indices])

    summaries, maps, analysed, timing = {}, {}, 0, {}
    for layer in layers:
        summaries[layer], maps[layer] = {}, {"images": images.clamp(0, 1), "masks": masks}
        for estimator in plan.estimators:
            started = time.perf_counter()
            layer_settings = AnalysisSettings(**{**asdict(settings), "layer": layer, "estimator": estimator,
                                                 "grid": plan.grid, "baseline": plan.baseline})
            analyses = analyze_run(run, layer_settings, plan.samples, split=split, max_epochs=max_epochs,
                                   datasets=datasets, progress=progress,
                                   final_only=estimator == "paper" and plan.paper_final_only)
            summaries[layer][estimator], maps[layer][estimator] = {}, {}
            for role, analysis in analyses.items():
                analysed += len(analysis.epochs)
                summaries[layer][estimator][role] = summarize_role(analysis, layer_settings)
                final = role_points(analysis, layer_settings)[-1]
                grid = (len(indices), plan.grid, plan.grid)
                maps[layer][estimator][role] = {
                    "entropy": analysis.entropy[-1].reshape(grid),
                    "points": final.is_point.reshape(grid),
                    "foreground": analysis.foreground.reshape(grid),
                }
            timing[f"analysis_{layer}_{estimator}_s"] = round(time.perf_counter() - started, 1)
    finished = time.perf_counter()
    data = {
        "title": title,
        "distilled_layer": config.student.layer,
        "estimators": list(plan.estimators),
        "settings": {**asdict(settings), **plan.model_dump(), "layers": layers, "split": split,
                     "max_epochs": max_epochs, "model": config.model.arch, "width": config.model.width,
                     "image_size": config.data.image_size, "student_fraction": config.data.student_fraction},
        "timing": {"train_s": round(trained - began, 1), "analysis_s": round(finished - trained, 1), **timing,
                   "checkpoints_analysed": analysed, "samples": plan.samples},
        "layers": summaries,
        "maps": maps,
    }
    return write_report(out, data)


def run_demo(
    out: str | Path, *, quick: bool = False, split: str = "train", progress: bool = True,
    estimators: Optional[list[str]] = None,
) -> dict[str, Path]:
    """The demo on the built-in synthetic data; ``quick`` is a smaller version for smoke tests;
    ``estimators`` replaces the demo's (converged and paper)."""
    raw = QUICK if quick else DEMO
    if estimators:
        raw = {**raw, "analysis": {**raw["analysis"], "estimators": estimators}}
    config = parse_config(raw, source="demo" + (" --quick" if quick else ""))
    settings = AnalysisSettings(steps=150, warm_steps=75) if quick else AnalysisSettings()
    return run_experiment(
        config, out, settings=settings, split=split,
        title="kdlens demo" + (" (quick)" if quick else "") + ": VGG-11 on synthetic shapes",
        progress=progress,
    )
