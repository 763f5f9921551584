"""``kdlens compare``: train the teacher once, then every listed method (and
the mutual-learning pairs) on the same data, the same student initialisation
and the same data order for each seed; collect the test errors. Every model
checkpoints each epoch, so an interrupted comparison resumes where it stopped.

Layout of the output directory::

    config.yaml, meta.json          the resolved compare config
    teacher/                        checkpoints of the one teacher (when a method needs it)
    students/<method>/seed<k>/      checkpoints of each method's student
    students/rate<p>/<method>/seed<k>/  the same per sample rate p (%), with ``sample_rates``
    mutual/<mode>/seed<k>/          checkpoints of each mutually trained pair
    mutual/independent-net2/seed<k>/  net 2 trained alone (Table 4's "Independent")
    results.json                    everything the tables are made from
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch.utils.data import Dataset

from kdlens.builders import build_datasets, build_network, resolve_device, student_split
from kdlens.train.distributed import barrier, is_writer
from kdlens.compare.config import (
    BASELINE, CompareConfig, MethodEntry, dump_compare_config, label_folder, parse_compare_config,
)
from kdlens.errors import ConfigError
from kdlens.data.augment import augmentation
from kdlens.models import NamedLayerModel
from kdlens.store import RunDirectory, atomic_write_json, load_weights
from kdlens.train.balance import GradientBalance
from kdlens.train.joint import train_jointly
from kdlens.train.mutual import MutualOptions, MutualPair, train_mutually
from kdlens.train.protocols import train_from_scratch

# Every student of a seed shares this role name, so all methods see the same
# data order and their connectors are set up from the same seed.
STUDENT_ROLE = "student"


def rate_label(rate: float) -> str:
    """A sample rate as the tables print it: 0.25 -> "25%"."""
    return f"{rate * 100:g}%"


def _error_row(history: list[dict]) -> dict[str, Any]:
    last = history[-1]
    return {
        "test_accuracy": last["test_accuracy"],
        "test_error": 100.0 * (1.0 - last["test_accuracy"]),
        "train_error": 100.0 * (1.0 - last["train_accuracy"]),
        "seconds": sum(row.get("seconds") or 0.0 for row in history),
        "epochs": last["epoch"],
    }


@dataclass
class Comparison:
    """What the analysis and the report need from a finished comparison."""

    config: CompareConfig
    run: RunDirectory
    datasets: tuple[Dataset, Dataset]
    train_set: Dataset  # the students' training set at the main (first) rate
    num_classes: int
    teacher: Optional[NamedLayerModel]
    # rate label -> method title -> seed -> row; ``results`` is the main rate's
    by_rate: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    mutual: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    teacher_row: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def results(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self.by_rate.setdefault(rate_label(self.config.rates[0]), {})

    def student_store(self, entry: MethodEntry, seed: int, rate: Optional[float] = None):
        where = f"{label_folder(entry.title)}/seed{seed}"
        if self.config.sample_rates:
            where = f"rate{(self.config.rates[0] if rate is None else rate) * 100:g}/{where}"
        return self.run.role(f"students/{where}")

    def load_student(self, entry: MethodEntry, seed: int, rate: Optional[float] = None) -> tuple[NamedLayerModel, dict]:
        """The final student of a method (at the main rate by default) and its
        method state (the IE split, IEP's statistics and MPNN...)."""
        store = self.student_store(entry, seed, rate)
        latest = store.latest()
        state = store.load(latest, required=("model",))
        model = build_network(self.config.model, self.config.experiment(seed), self.num_classes, init="student")
        load_weights(model, state["model"], source=f"checkpoint {str(store.path(latest))!r}",
                     model_name=f"the {entry.title} student")
        return model.eval(), state.get("extra", {}).get("method", {})


# what a comparison reports on but does not train by: changing them keeps the run directory
NOT_TRAINING = ("analysis", "explain")


def same_training(existing_text: str, config: CompareConfig) -> bool:
    """Whether a run directory's config (its text) trains exactly as ``config``
    does: the same keys outside the analysis settings, with every key an earlier
    kdlens did not write at its default."""
    try:
        existing = parse_compare_config(yaml.safe_load(existing_text), source="the run directory's config.yaml")
    except (ConfigError, yaml.YAMLError):
        return False
    return training_part(existing) == training_part(config)


def training_part(config: CompareConfig) -> dict[str, Any]:
    """The config's keys that decide what is trained (all but ``NOT_TRAINING``)."""
    return {k: v for k, v in config.to_dict().items() if k not in NOT_TRAINING}


def train_comparison(config: CompareConfig, out: str | Path, *, progress: bool = True) -> Comparison:
    out = Path(out)
    device = resolve_device(config.device)  # before anything is written to out
    first = config.experiment(config.seeds[0])
    began = time.perf_counter()
    datasets = build_datasets(first)  # one data set for every seed
    run = RunDirectory(out)
    if is_writer():  # data parallel (kdlens compare --nproc, torchrun): rank 0 writes, the others train
        run.initialise(dump_compare_config(config), config.seeds[0], same=lambda text: same_training(text, config))
    barrier()
    # the students' share at each rate: the first seed's draw for every seed and method
    rate_sets = {rate: student_split(first, datasets[0], rate) for rate in config.rates}
    train_set = rate_sets[config.rates[0]]
    num_classes = len(datasets[0].classes)

    teacher, teacher_row = None, {}
    if any(entry.name != BASELINE for entry in config.methods):  # mutual learning needs none
        teacher = train_from_scratch("teacher", first, run, progress=progress, datasets=datasets)
        teacher_row = _error_row(run.role("teacher").load(run.role("teacher").latest())["history"])
    comparison = Comparison(config, run, datasets, train_set, num_classes, teacher, teacher_row=teacher_row)

    for rate in config.rates:
        rate_set = rate_sets[rate]
        results = comparison.by_rate.setdefault(rate_label(rate), {})
        for seed in config.seeds:
            experiment = config.experiment(seed)
            for entry in config.methods:
                student = build_network(config.model, experiment, num_classes, init="student")
                method = None
                if entry.name != BASELINE:
                    method = entry.build(config.layer)
                if progress:
                    at = f" at {rate_label(rate)} of the data" if config.sample_rates else ""
                    print(f"[compare] {entry.title}, seed {seed}{at}", flush=True)
                history = train_jointly(
                    student, rate_set, datasets[1], comparison.student_store(entry, seed, rate), config.student,
                    seed=seed, role=STUDENT_ROLE, device=device, method=method,
                    teacher=teacher if method is not None else None, progress=progress,
                    balance=GradientBalance() if entry.balanced else None,
                    augment=augmentation(config.data),
                )
                results.setdefault(entry.title, {})[str(seed)] = _error_row(history)

    if config.mutual:
        _train_mutual(comparison, device, progress)
    comparison.timing["total_train_s"] = time.perf_counter() - began
    if is_writer():
        atomic_write_json(out / "results.json", {
            "teacher": comparison.teacher_row, "students": comparison.results, "mutual": comparison.mutual,
            "by_rate": comparison.by_rate,
        })
    return comparison


def _train_mutual(comparison: Comparison, device: torch.device, progress: bool) -> None:
    config, run = comparison.config, comparison.run
    test_set = comparison.datasets[1]
    independent: dict[str, dict[str, Any]] = {}
    for seed in config.seeds:
        experiment = config.experiment(seed)
        net2 = build_network(config.teacher_model, experiment, comparison.num_classes, init="teacher")
        history = train_jointly(net2, comparison.train_set, test_set, run.role(f"mutual/independent-net2/seed{seed}"),
                                config.student, seed=seed, role=STUDENT_ROLE, device=device, progress=progress,
                                augment=augmentation(config.data))
        independent[str(seed)] = _error_row(history)
    baseline = next(e.title for e in config.methods if e.name == BASELINE)
    comparison.mutual["Independent"] = {"net1": comparison.results[baseline], "net2": independent}
    for entry in config.mutual:
        per_net: dict[str, dict[str, Any]] = {"net1": {}, "net2": {}}
        for seed in config.seeds:
            experiment = config.experiment(seed)
            pair = MutualPair(
                build_network(config.model, experiment, comparison.num_classes, init="student"),
                build_network(config.teacher_model, experiment, comparison.num_classes, init="teacher"),
                entry.mode, MutualOptions(**{"layer": config.layer, **entry.options}),
            )
            if progress:
                print(f"[compare] {entry.title}, seed {seed}", flush=True)
            history = train_mutually(pair, comparison.train_set, test_set,
                                     run.role(f"mutual/{label_folder(entry.title)}/seed{seed}"), config.student,
                                     seed=seed, role=STUDENT_ROLE, device=device, progress=progress,
                                     augment=augmentation(config.data))
            last = history[-1]
            seconds = sum(row.get("seconds") or 0.0 for row in history)
            for k in ("net1", "net2"):
                accuracy = last[f"{k}_test_accuracy"]
                per_net[k][str(seed)] = {"test_accuracy": accuracy, "test_error": 100.0 * (1.0 - accuracy),
                                         "seconds": seconds / 2}
        comparison.mutual[entry.title] = per_net


def seed_models(comparison: Comparison, seed: Optional[int] = None) -> dict[str, tuple[NamedLayerModel, dict]]:
    """Every method's final student of one seed (default: the first)."""
    seed = comparison.config.seeds[0] if seed is None else seed
    return {entry.title: comparison.load_student(entry, seed) for entry in comparison.config.methods}
