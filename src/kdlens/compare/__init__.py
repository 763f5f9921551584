"""``kdlens compare``: many distillation methods on one teacher, the same data
and seeds, reported in the form of the IE-KD paper's Table 1 with its
analysis figures. ``run_comparison`` is the whole pipeline; the pieces are
``runner`` (training), ``analysis`` (IE-KD's sec. 4.7 tools),
``iep_knowledge`` (IEP's Fig. 5), ``explain`` (the knowledge points of every
student, ``--explain``), ``seed_interval`` (the claims' paired intervals), ``tables``, ``figures``, ``iep_figures``
and ``report``."""

from __future__ import annotations

import time
from pathlib import Path

from kdlens.compare.config import CompareConfig, load_compare_config, parse_compare_config


def run_comparison(config: CompareConfig, out: str | Path, *, progress: bool = True) -> dict[str, Path]:
    """Train (resuming what exists), analyse and report into ``out``; returns the written files.

    Under torch.distributed (``kdlens compare --nproc N`` or torchrun) every rank
    trains a slice of each batch (``kdlens.train.distributed``); rank 0 writes
    the checkpoints, analyses and reports, and the other ranks return {}."""
    from kdlens.train.distributed import is_writer
    from kdlens.compare.analysis import analyze_comparison
    from kdlens.compare.explain import explain_comparison
    from kdlens.compare.iep_knowledge import iep_knowledge
    from kdlens.compare.report import write_comparison_report
    from kdlens.compare.runner import train_comparison

    began = time.perf_counter()
    comparison = train_comparison(config, out, progress=progress)
    if not is_writer():  # data parallel: rank 0 analyses and reports
        return {}
    trained = time.perf_counter()
    analysis = analyze_comparison(comparison, progress=progress) if config.analysis.enabled else None
    iep = {entry.title: iep_knowledge(comparison, entry, per_class=config.analysis.iep_images_per_class)
           for entry in config.methods if entry.name == "iep" and comparison.teacher is not None}
    analysed = time.perf_counter()
    explained = explain_comparison(comparison, progress=progress) if config.explain.enabled else None
    finished = time.perf_counter()
    timing = {"training (this invocation)_s": trained - began, "analysis_s": analysed - trained,
              "knowledge points_s": finished - analysed, "total_s": finished - began}
    return write_comparison_report(comparison, analysis, out, timing, iep=iep, explained=explained)


__all__ = ["CompareConfig", "load_compare_config", "parse_compare_config", "run_comparison"]
