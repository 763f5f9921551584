"""The whole paper in one call: config -> train -> analyse -> report.

``run_experiment`` trains a teacher, a baseline and a student distilled from a
middle layer, measures the knowledge points of the student's and baseline's
checkpoints (and the teacher's last) at the distilled layer and at least one
other, and writes the report. Every stage is resumable: training resumes from
the last checkpoint, the analysis from its per-checkpoint cache.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import torch

from kdlens.builders import build_datasets
from kdlens.config import ExperimentConfig, parse_config
from kdlens.data import denormalize
from kdlens.discarding.analyze import AnalysisSettings, analysis_indices, analyze_run, summarize_role
from kdlens.discarding.knowledge_points import knowledge_points
from kdlens.train import train_roles

DEMO = {
    "seed": 0,
    "data": {"name": "synthetic", "image_size": 32, "num_classes": 10, "train_size": 10000,
             "test_size": 1000, "distractors": 2, "student_fraction": 0.1},
    "model": {"arch": "vgg11", "width": 0.25, "dropout": 0.5},
    "teacher": {"epochs": 12, "lr": 0.05},
    "baseline": {"epochs": 30, "lr": 0.05},
    "student": {"layer": "fc1", "distill": {"epochs": 30, "lr": 0.003}, "classify": {"epochs": 20, "lr": 0.05}},
}
QUICK = {
    **DEMO,
    "data": {**DEMO["data"], "num_classes": 4, "train_size": 2000, "test_size": 400, "student_fraction": 0.25},
    "model": {**DEMO["model"], "width": 0.125},
    "teacher": {"epochs": 4, "lr": 0.05},
    "baseline": {"epochs": 6, "lr": 0.05},
    "student": {"layer": "fc1", "distill": {"epochs": 6, "lr": 0.003}, "classify": {"epochs": 4, "lr": 0.05}},
}


def demo_config(quick: bool = False) -> ExperimentConfig:
    return parse_config(QUICK if quick else DEMO, source="demo" + (" --quick" if quick else ""))


def run_experiment(
    config: ExperimentConfig,
    out: str | Path,
    *,
    layers: Optional[list[str]] = None,
    settings: AnalysisSettings = AnalysisSettings(),
    samples: int = 16,
    split: str = "train",
    max_epochs: Optional[int] = 8,
    title: str = "kdlens experiment",
    progress: bool = True,
) -> dict[str, Path]:
    """Train, analyse and report into ``out``; returns the report's files."""
    from kdlens.report import write_report

    out = Path(out)
    layers = layers or [config.student.layer, "conv" if config.student.layer != "conv" else "fc1"]
    began = time.perf_counter()
    datasets = build_datasets(config)
    run = train_roles(config, out / "run", progress=progress, datasets=datasets)
    trained = time.perf_counter()

    dataset = datasets[0] if split == "train" else datasets[1]
    indices = analysis_indices(len(dataset), samples, config.seed)
    images = denormalize(torch.stack([dataset[i].image for i in indices]), dataset.mean, dataset.std)
    masks = torch.stack([dataset[i].mask for i in indices])

    summaries, maps, analysed = {}, {}, 0
    for layer in layers:
        layer_settings = replace(settings, layer=layer)
        summaries[layer], maps[layer] = {}, {"images": images.clamp(0, 1), "masks": masks}
        analyses = analyze_run(run, layer_settings, samples, split=split, max_epochs=max_epochs,
                               datasets=datasets, progress=progress)
        for role, analysis in analyses.items():
            analysed += len(analysis.epochs)
            summaries[layer][role] = summarize_role(analysis, layer_settings)
            final = knowledge_points(analysis.entropy[-1], analysis.foreground, layer_settings.threshold,
                                     valid=analysis.valid[-1])
            grid = (len(indices), settings.grid, settings.grid)
            maps[layer][role] = {
                "entropy": analysis.entropy[-1].reshape(grid),
                "points": final.is_point.reshape(grid),
                "foreground": analysis.foreground.reshape(grid),
            }
    finished = time.perf_counter()
    data = {
        "title": title,
        "distilled_layer": config.student.layer,
        "settings": {**asdict(settings), "layers": layers, "samples": samples, "split": split,
                     "max_epochs": max_epochs, "model": config.model.arch, "width": config.model.width,
                     "image_size": config.data.image_size, "student_fraction": config.data.student_fraction},
        "timing": {"train_s": round(trained - began, 1), "analysis_s": round(finished - trained, 1),
                   "checkpoints_analysed": analysed, "samples": samples},
        "layers": summaries,
        "maps": maps,
    }
    return write_report(out, data)


def run_demo(out: str | Path, *, quick: bool = False, split: str = "train", progress: bool = True) -> dict[str, Path]:
    """The demo on the built-in synthetic data; ``quick`` is a smaller version for smoke tests."""
    config = demo_config(quick)
    settings = AnalysisSettings(grid=8, steps=150, warm_steps=50) if quick else AnalysisSettings()
    return run_experiment(
        config, out, settings=settings, samples=6 if quick else 16, split=split, max_epochs=4 if quick else 8,
        title="kdlens demo" + (" (quick)" if quick else "") + ": VGG-11 on synthetic shapes",
        progress=progress,
    )
