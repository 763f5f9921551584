"""The whole paper in one call: config -> train -> analyse -> report.

``run_experiment`` trains a teacher, a baseline and a student distilled from a
middle layer, measures the knowledge points of the student's and baseline's
checkpoints, the teacher's last and the teacher's random initial weights at the
distilled layer (or the layers given, or ``analysis.layers``), with each estimator the config's
``analysis`` names, and writes the report. Every stage is resumable: training
resumes from the last checkpoint, the analysis from its per-checkpoint cache.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Optional

import torch
import yaml

from kdlens.builders import build_datasets
from kdlens.config import ExperimentConfig, parse_config
from kdlens.explain.analyze import AnalysisSettings, analyze_run, role_points, sample_indices, summarize_role
from kdlens.errors import UsageError
from kdlens.modalities import modality_of
from kdlens.train import train_roles

# Each demo's config is one file shipped with the package (``kdlens demo
# [--modality points] --print-config`` shows it); --quick changes only what
# makes it small.
DEMO_CONFIGS = {"image": "demo.yaml", "points": "demo-points.yaml", "text": "demo-text.yaml"}
QUICK_CHANGES = {
    "image": {
        "data": {"num_classes": 4, "train_size": 2000, "test_size": 400, "student_fraction": 0.25},
        "teacher": {"epochs": 4},
        "baseline": {"epochs": 4},
        "student": {"distill": {"epochs": 4}, "classify": {"epochs": 3}},
        "analysis": {"samples": 4, "grid": 8},
    },
    "points": {
        "data": {"num_classes": 4, "train_size": 400, "test_size": 100, "num_points": 64, "background_points": 31,
                 "student_fraction": 0.25},
        "model": {"width": 0.125},
        "teacher": {"epochs": 3},
        "baseline": {"epochs": 4},
        "student": {"distill": {"epochs": 2}, "classify": {"epochs": 2}},
        "analysis": {"samples": 4, "max_epochs": 3},
    },
    "text": {
        "data": {"train_size": 800, "test_size": 200, "student_fraction": 0.25},
        "teacher": {"epochs": 3},
        "baseline": {"epochs": 4},
        "student": {"distill": {"epochs": 2}, "classify": {"epochs": 2}},
        "analysis": {"estimators": ["converged"], "samples": 4, "max_epochs": 3},
    },
}
TITLES = {"image": "VGG-11 on synthetic shapes", "points": "PointNet on synthetic point clouds",
          "text": "BERT on synthetic sentences"}


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied key by key, nested mappings merged."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _check_modality(modality: str) -> str:
    if modality not in DEMO_CONFIGS:
        raise UsageError(f"modality = {modality!r}: expected one of {', '.join(DEMO_CONFIGS)}")
    return modality


def demo_text(modality: str = "image") -> str:
    """The demo's config file, comments included."""
    return resources.files("kdlens").joinpath(DEMO_CONFIGS[_check_modality(modality)]).read_text()


def demo_raw(quick: bool = False, modality: str = "image") -> dict:
    raw = yaml.safe_load(demo_text(modality))
    return _merged(raw, QUICK_CHANGES[modality]) if quick else raw


def demo_config(quick: bool = False, modality: str = "image") -> ExperimentConfig:
    source = f"demo{' --modality ' + modality if modality != 'image' else ''}{' --quick' if quick else ''}"
    return parse_config(demo_raw(quick, modality), source=source)


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
    layers = layers or plan.layers or [config.student.layer]
    max_epochs = max_epochs if max_epochs is not None else plan.max_epochs
    # An estimator without defaults for these models (the paper's recipe on
    # point clouds) fails here, not after training.
    for estimator in plan.estimators:
        chosen = AnalysisSettings(**{**asdict(settings), "estimator": estimator})
        for arch in {config.model.arch, config.resolved_teacher_model.arch}:
            chosen.rule(arch)
            chosen.engine_options(arch, warm=False)
    began = time.perf_counter()
    datasets = build_datasets(config)
    run = train_roles(config, out / "run", progress=progress, datasets=datasets)
    trained = time.perf_counter()

    dataset = datasets[0] if split == "train" else datasets[1]
    indices = sample_indices(config, *datasets, plan.samples, split)
    modality = modality_of(dataset)
    shown = modality.report_inputs(torch.stack([dataset[i].image for i in indices]),
                                   torch.stack([dataset[i].mask for i in indices]), dataset)

    summaries, maps, analysed, timing = {}, {}, 0, {}
    for layer in layers:
        summaries[layer], maps[layer] = {}, dict(shown)
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
                layout = modality.unit_layout(len(indices), plan.grid, analysis.foreground.shape[-1])
                maps[layer][estimator][role] = {
                    "entropy": analysis.entropy[-1].reshape(layout),
                    "points": final.is_point.reshape(layout),
                    "foreground": analysis.foreground.reshape(layout),
                }
            timing[f"analysis_{layer}_{estimator}_s"] = round(time.perf_counter() - started, 1)
    finished = time.perf_counter()
    data = {
        "title": title,
        "distilled_layer": config.student.layer,
        "estimators": list(plan.estimators),
        "settings": {**asdict(settings), **plan.model_dump(), "layers": layers, "split": split,
                     "max_epochs": max_epochs, "model": config.model.arch, "width": config.model.width,
                     "image_size": getattr(config.data, "image_size", None), "modality": modality.name,
                     "student_fraction": config.data.student_fraction},
        "timing": {"train_s": round(trained - began, 1), "analysis_s": round(finished - trained, 1), **timing,
                   "checkpoints_analysed": analysed, "samples": plan.samples},
        "layers": summaries,
        "maps": maps,
    }
    return write_report(out, data, unit_maps=modality.unit_maps)


def run_demo(
    out: str | Path, *, quick: bool = False, split: str = "train", progress: bool = True,
    estimators: Optional[list[str]] = None, modality: str = "image",
) -> dict[str, Path]:
    """The demo on the built-in synthetic data of ``modality`` (images or point
    clouds); ``quick`` is a smaller version for smoke tests; ``estimators``
    replaces the demo's (converged and paper)."""
    raw = demo_raw(quick, modality)
    if estimators:
        raw = {**raw, "analysis": {**raw["analysis"], "estimators": estimators}}
    config = parse_config(raw, source="demo" + (" --quick" if quick else ""))
    settings = AnalysisSettings(steps=150, warm_steps=75) if quick else AnalysisSettings()
    return run_experiment(
        config, out, settings=settings, split=split,
        title="kdlens demo" + (" (quick)" if quick else "") + f": {TITLES[modality]}",
        progress=progress,
    )
