"""``kdlens validate``: the knowledge-point measurement on planted knowledge.

Knowledge points (paper, Sec. 3.2) are input grid cells whose information a
layer keeps markedly more than the background does.  Whether the measurement
finds the right cells can only be checked where the answer is known by
construction.  :func:`run_validation` builds three such cases on
:class:`~kdlens.data.synthetic.SyntheticShapes` (32x32, no distractors):

* ``object_only``: a VGG-11 trained on ``cue="object"`` data, where the label
  is carried only by the object's shape and the background is random.  Its
  fc1 feature must keep the object: most knowledge points on the foreground.
* ``background_cue``: the same network trained on ``cue="background"`` data,
  where the background colour is the label (in the train AND the test split)
  and the object's shape is random.  It has no reason to keep the object.
* ``random_init``: the architecture with its random initial weights, no
  training: a reference of what the measurement gives for a feature that
  learned nothing.

The same N training images are measured for all three networks.  The two
cues draw the same geometry (centre, size, angle) for a given index but a
different object family (under ``cue="background"`` the family is random), so
the images are chosen among the indices whose background-cue object family
equals the label: there the object has the same shape, place and mask under
both cues, so every network is measured on the same foreground cells.  The
``background_cue`` network is measured on its own (``cue="background"``)
rendering of those images, the other two on the ``cue="object"`` rendering.

Both estimators of information discarding are run (``"paper"``, the authors'
recipe with VGG's entropy weight 7, and ``"converged"``), at layer fc1 on a
GxG grid, and the knowledge points come from
:data:`~kdlens.explain.knowledge_points.DEFAULT_RULES`.  The acceptance
bars, per estimator:

* lambda(object_only) - lambda(background_cue) >= 0.3, and
* N_fg(object_only) >= 2 x N_fg(background_cue), with N_fg(object_only) > 0
  (two zeros pass the inequality but show nothing).

They are reported as they come out; nothing is tuned to make them pass.

Output: ``DIR/validation.json`` (``{network: {estimator: {lambda, n_fg,
n_bg, ...}}}`` plus ``bars``, ``accuracy``, ``settings`` ...),
``DIR/validation_maps.png`` and the networks' weights in ``DIR/networks/``
(reused by a rerun, which gives the same numbers; the per-epoch training
checkpoints, from which an interrupted training resumes, are in
``DIR/training/``).  Measurements are cached
in ``DIR/measurements/`` under a key of every setting they depend on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.config import OptimConfig
from kdlens.data.synthetic import SyntheticShapes
from kdlens.explain import information_discarding, knowledge_points, summarize_points
from kdlens.explain.knowledge_points import DEFAULT_RULES
from kdlens.explain.paper import paper_defaults
from kdlens.modalities import modality_of
from kdlens.models import build_model
from kdlens.seeding import derive_seed
from kdlens.report.validation_maps import maps_figure
from kdlens.errors import CheckpointError, UsageError
from kdlens.store import (
    CheckpointStore,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint_file,
    load_weights,
)
from kdlens.train.evaluate import evaluate
from kdlens.train.loop import Phase, train_phases

NETWORKS = ("object_only", "background_cue", "random_init")
ESTIMATORS = ("paper", "converged")
CUES = {"object_only": "object", "background_cue": "background", "random_init": "object"}
TRAINED = ("object_only", "background_cue")
LAMBDA_GAP = 0.3  # lambda(object_only) - lambda(background_cue) >= this
N_FG_FACTOR = 2.0  # N_fg(object_only) >= this x N_fg(background_cue)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ValidationSettings:
    """Everything a validation run depends on.  :data:`FULL` and :data:`QUICK`
    are the command's two sizes; tests pass smaller ones."""

    arch: str = "vgg11"
    num_classes: int = 4
    image_size: int = 32
    train_samples: int = 3000
    test_samples: int = 1000
    width: float = 0.25
    dropout: float = 0.5
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    layer: str = "fc1"
    samples: int = 8  # N images measured
    grid: int = 16
    foreground_rule: float = 0.5  # a cell is foreground when >= half of it is object
    converged_steps: int = 300
    converged_noise_samples: int = 8
    map_samples: int = 3  # images per network in the figure
    threads: int = 1  # torch intra-op threads during the run (restored after); fixes the summation order

    def __post_init__(self) -> None:
        positive = ("num_classes", "train_samples", "test_samples", "batch_size", "samples", "grid",
                    "converged_steps", "converged_noise_samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"{name} = {getattr(self, name)!r}: expected an integer >= 1")
        if self.threads < 1:
            raise UsageError(f"threads = {self.threads!r}: expected an integer >= 1")
        if self.epochs < 0 or self.map_samples < 0:
            raise UsageError(f"epochs = {self.epochs}, map_samples = {self.map_samples}: expected >= 0")
        if not self.grid <= self.image_size:
            raise UsageError(f"grid = {self.grid}: expected at most image_size = {self.image_size}")

    def training_key(self, network: str) -> dict[str, Any]:
        """The settings a network's weights depend on (checked when reused)."""
        keys = ("arch", "num_classes", "image_size", "width", "dropout", "seed")
        if network in TRAINED:
            keys += ("train_samples", "epochs", "batch_size", "lr", "momentum", "weight_decay")
        return {"network": network, "cue": CUES[network], **{k: getattr(self, k) for k in keys}}


FULL = ValidationSettings()
# quick: the smallest data and width at which the object-only network still
# learns the shapes (about 0.98 test accuracy with 2000 images, 10 epochs)
QUICK = ValidationSettings(train_samples=2000, test_samples=400, width=0.125, samples=4, grid=8,
                           converged_steps=150, map_samples=2)


# ----------------------------------------------------------------------------- data


def _dataset(settings: ValidationSettings, split: str, cue: str, num_samples: int) -> SyntheticShapes:
    return SyntheticShapes(split=split, num_samples=num_samples, image_size=settings.image_size,
                           num_classes=settings.num_classes, seed=settings.seed, distractors=0, cue=cue)


def _normalised(dataset: SyntheticShapes) -> Tensor:
    return dataset.images.float() / 127.5 - 1.0  # as SyntheticShapes.__getitem__ (mean = std = 0.5)


def measured_indices(background_set: SyntheticShapes, count: int) -> list[int]:
    """The first training indices, ``count`` of them, spread over the classes in
    turn, whose background-cue object has the label's family, so that the object
    (and its mask) is the same under both cues."""
    per_class = math.ceil(count / background_set.num_classes)
    taken: dict[int, int] = {}
    chosen: list[int] = []
    for index in range(len(background_set)):
        label = index % background_set.num_classes
        if taken.get(label, 0) < per_class and background_set.params(index).object.family == label:
            chosen.append(index)
            taken[label] = taken.get(label, 0) + 1
            if len(chosen) == count:
                return chosen
    raise UsageError(
        f"only {len(chosen)} of {len(background_set)} training images have the same object under both cues; "
        f"expected samples = {count}: use more training samples or fewer measured ones"
    )


# ----------------------------------------------------------------------------- networks


def _build(settings: ValidationSettings, network: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(settings.seed, "validate", "init", network))
        return build_model(settings.arch, num_classes=settings.num_classes, image_size=settings.image_size,
                           width=settings.width, dropout=settings.dropout)


def _network(out: Path, settings: ValidationSettings, network: str, data: dict[str, dict[str, Any]],
             progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The network, trained (or reused from ``out/networks``), and its record."""
    path = out / "networks" / f"{network}.pt"
    key = settings.training_key(network)
    model = _build(settings, network)
    if path.is_file():
        saved = load_checkpoint_file(path, required=("key", "model", "record"), kind="validation network")
        if saved["key"] != key:
            raise CheckpointError(
                f"{path} holds a {network} network trained with other settings ({saved['key']}); "
                f"expected {key}: use another --out directory"
            )
        load_weights(model, saved["model"], source=f"validation network {str(path)!r}",
                     model_name=f"{settings.arch} (width {settings.width:g})")
        model.eval()
        return model, {**saved["record"], "reused": True}
    cue = CUES[network]
    train, test = data[cue]["train"], data[cue]["test"]
    began = time.perf_counter()
    cpu = torch.device("cpu")
    if network in TRAINED:
        # the project's one training loop: SGD with a cosine schedule, per-epoch
        # checkpoints (an interrupted run resumes), epochs seeded from (seed, role, epoch)
        optim = OptimConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                            momentum=settings.momentum, weight_decay=settings.weight_decay, schedule="cosine")
        phase = Phase("train", optim, [model], lambda images, labels: F.cross_entropy(model(images), labels))
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        history = train_phases(model, [phase], train, test, CheckpointStore(out / "training" / f"{network}-{digest}"),
                               seed=settings.seed, role=f"validate-{network}", device=cpu, progress=progress)
        losses = [row["objective"] for row in history[1:]]
        final = history[-1]
    else:
        losses = []
        final = {"train_accuracy": evaluate(model, train, cpu)["accuracy"],
                 "test_accuracy": evaluate(model, test, cpu)["accuracy"]}
    model.eval()
    record = {
        "cue": cue,
        "trained": network in TRAINED,
        "epochs": settings.epochs if network in TRAINED else 0,
        "train_loss": [_finite(loss) for loss in losses],  # None where training diverged
        "train_accuracy": final["train_accuracy"],
        "test_accuracy": final["test_accuracy"],
        "chance": 1.0 / settings.num_classes,
        "train_seconds": round(time.perf_counter() - began, 2),
    }
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"key": key, "model": state, "record": record, "format": FORMAT_VERSION}, path)
    return model, {**record, "reused": False}


# ----------------------------------------------------------------------------- measurement


def _estimator_options(settings: ValidationSettings, estimator: str) -> dict[str, Any]:
    seed = derive_seed(settings.seed, "validate", "measure", estimator)  # the same draws for every network
    if estimator == "paper":
        return {"entropy_weight": paper_defaults(settings.arch)[0], "seed": seed}
    return {"steps": settings.converged_steps, "noise_samples": settings.converged_noise_samples, "seed": seed}


def _measure(out: Path, settings: ValidationSettings, network: str, estimator: str, model: nn.Module,
             inputs: Tensor, units: Tensor, indices: list[int], progress: bool) -> dict[str, Any]:
    """Entropies of ``inputs`` at the layer, cached in ``out/measurements``."""
    options = _estimator_options(settings, estimator)
    key = {"training": settings.training_key(network), "estimator": estimator, "options": options,
           "layer": settings.layer, "grid": settings.grid, "indices": indices, "format": FORMAT_VERSION}
    path = out / "measurements" / f"{network}-{estimator}.pt"
    if path.is_file():
        saved = load_checkpoint_file(path, required=("key", "result"), kind="validation measurement")
        if saved["key"] == key:
            return saved["result"]
    began = time.perf_counter()
    result = information_discarding(model, inputs, settings.layer, units, estimator=estimator,
                                    progress=progress, **options)
    stored = {
        "entropy": result.entropy.detach().cpu(),
        "valid": result.valid.detach().cpu(),
        "converged": result.converged.detach().cpu(),
        "invalid_reason": list(result.invalid_reason),
        "seconds": round(time.perf_counter() - began, 2),
    }
    atomic_torch_save({"key": key, "result": stored}, path)
    return stored


def _finite(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def _entry(points, measured: dict[str, Any]) -> dict[str, Any]:
    """One network x estimator entry of validation.json; None (with a reason) where undefined."""
    summary = summarize_points(points)
    lam, n_fg, n_bg = (_finite(summary.foreground_ratio), _finite(summary.n_fg_mean), _finite(summary.n_bg_mean))
    reason = None
    if summary.n_defined == 0:
        reasons = sorted({r for r in points.reason if r})
        reason = "no sample is defined: " + "; ".join(reasons)
    elif lam is None:
        reason = "no defined sample has a knowledge point, so lambda is undefined"
    return {
        "lambda": lam,
        "n_fg": n_fg,
        "n_bg": n_bg,
        "reason": reason,
        "n_samples": len(points.defined),
        "n_defined": summary.n_defined,
        "n_without_points": summary.n_without_points,
        "n_converged": int(measured["converged"].sum()),
        "sample_reasons": [r for r in points.reason],
        "per_sample_n_fg": points.n_fg.tolist(),
        "per_sample_n_bg": points.n_bg.tolist(),
        "seconds": measured.get("seconds"),
    }


def evaluate_bars(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The acceptance bars per estimator from ``{network: {estimator: entry}}``.

    ``passed`` is None (with a reason) where a number it needs is undefined."""
    bars: dict[str, dict[str, Any]] = {}
    for estimator in ESTIMATORS:
        obj, bg = results["object_only"][estimator], results["background_cue"][estimator]
        lo, lb = obj.get("lambda"), bg.get("lambda")
        if lo is None or lb is None:
            gap = {"value": None, "required": LAMBDA_GAP, "passed": None,
                   "reason": "lambda undefined for " + " and ".join(
                       n for n, v in (("object_only", lo), ("background_cue", lb)) if v is None)}
        else:
            gap = {"value": lo - lb, "required": LAMBDA_GAP, "passed": bool(lo - lb >= LAMBDA_GAP), "reason": None}
        fo, fb = obj.get("n_fg"), bg.get("n_fg")
        if fo is None or fb is None:
            fg = {"object_only": fo, "background_cue": fb, "required_factor": N_FG_FACTOR, "ratio": None,
                  "passed": None, "reason": "N_fg undefined for " + " and ".join(
                      n for n, v in (("object_only", fo), ("background_cue", fb)) if v is None)}
        else:
            passed = fo >= N_FG_FACTOR * fb and fo > 0
            fg = {"object_only": fo, "background_cue": fb, "required_factor": N_FG_FACTOR,
                  "ratio": fo / fb if fb > 0 else None, "passed": bool(passed),
                  "reason": "object_only has no foreground point" if fo == 0 else None}
        verdicts = [gap["passed"], fg["passed"]]
        bars[estimator] = {"lambda_gap": gap, "n_fg_ratio": fg,
                           "passed": None if None in verdicts else all(verdicts)}
    return bars


# ----------------------------------------------------------------------------- the run


def _tqdm(**kwargs):
    from tqdm.auto import tqdm

    return tqdm(dynamic_ncols=True, **kwargs)


def _fmt(value: Optional[float], spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(summary: dict[str, Any]) -> str:
    """The printed table and bars of a validation summary."""
    lines = [f"{'network':16s}{'estimator':11s}{'lambda':>8s}{'N_fg':>8s}{'N_bg':>8s}{'defined':>9s}"
             f"{'train acc':>11s}{'test acc':>10s}"]
    for network in NETWORKS:
        acc = summary["accuracy"][network]
        for estimator in ESTIMATORS:
            e = summary[network][estimator]
            lines.append(f"{network:16s}{estimator:11s}{_fmt(e['lambda']):>8s}{_fmt(e['n_fg'], '.2f'):>8s}"
                         f"{_fmt(e['n_bg'], '.2f'):>8s}{e['n_defined']:>5d}/{e['n_samples']:<3d}"
                         f"{_fmt(acc['train_accuracy']):>11s}{_fmt(acc['test_accuracy']):>10s}")
    share = summary.get("measurement", {}).get("foreground_unit_share", {}).get("object")
    if share is not None:
        lines.append(f"foreground share of the grid cells: {share:.3f} (the lambda of points placed at random)")
    lines.append("acceptance bars:")
    for estimator, bar in summary["bars"].items():
        gap, fg = bar["lambda_gap"], bar["n_fg_ratio"]
        verdict = {True: "PASS", False: "FAIL", None: "UNDEFINED"}
        lines.append(f"  {estimator:10s} lambda(object_only) - lambda(background_cue) = {_fmt(gap['value'])} "
                     f">= {LAMBDA_GAP}: {verdict[gap['passed']]}" + (f" ({gap['reason']})" if gap["reason"] else ""))
        limit = None if fg["background_cue"] is None else N_FG_FACTOR * fg["background_cue"]
        lines.append(f"  {'':10s} N_fg(object_only) = {_fmt(fg['object_only'], '.2f')} >= {N_FG_FACTOR:g} x "
                     f"N_fg(background_cue) = {_fmt(limit, '.2f')}: {verdict[fg['passed']]}"
                     + (f" ({fg['reason']})" if fg["reason"] else ""))
    return "\n".join(lines)


def run_validation(out: str | Path, quick: bool = False, progress: bool = True,
                   settings: Optional[ValidationSettings] = None) -> dict[str, Any]:
    """Train (or reuse) the three networks, measure them, write
    ``validation.json`` and ``validation_maps.png`` into ``out``; returns the
    JSON's content.  ``settings`` overrides the size chosen by ``quick``.

    Torch runs with ``settings.threads`` intra-op threads (1 by default, then
    restored): these models are tiny, a second thread on a shared machine
    mostly fights other processes (a training step ran ~40x slower), and a
    fixed thread count fixes the order of float sums, so reruns agree."""
    settings = settings or (QUICK if quick else FULL)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _run(Path(out), quick, progress, settings)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, quick: bool, progress: bool, settings: ValidationSettings) -> dict[str, Any]:
    began = time.perf_counter()
    timing: dict[str, float] = {}

    tick = time.perf_counter()
    data: dict[str, dict[str, Any]] = {}
    datasets: dict[str, SyntheticShapes] = {}
    for cue in ("object", "background"):
        train = _dataset(settings, "train", cue, settings.train_samples)
        test = _dataset(settings, "test", cue, settings.test_samples)
        datasets[cue] = train
        data[cue] = {"train": train, "test": test}
    indices = measured_indices(datasets["background"], settings.samples)
    timing["data_seconds"] = round(time.perf_counter() - tick, 2)

    tick = time.perf_counter()
    models, accuracy = {}, {}
    for network in NETWORKS:
        models[network], accuracy[network] = _network(out, settings, network, data, progress)
    timing["networks_seconds"] = round(time.perf_counter() - tick, 2)

    modality = modality_of(datasets["object"])
    units = modality.units((settings.image_size, settings.image_size), settings.grid)
    index = torch.tensor(indices)
    masks = {cue: datasets[cue].masks[index] for cue in datasets}
    masks_identical = bool(torch.equal(masks["object"], masks["background"]))
    foreground = {cue: modality.foreground(m, units, settings.foreground_rule) for cue, m in masks.items()}

    tick = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    panels: dict[str, dict[str, Any]] = {}
    jobs = [(n, e) for n in NETWORKS for e in ESTIMATORS]
    bar = _tqdm(total=len(jobs), desc="measure", unit="run", disable=not progress)
    for network, estimator in jobs:
        cue = CUES[network]
        bar.set_postfix(network=network, estimator=estimator)
        inputs = _normalised(data[cue]["train"])[index]
        measured = _measure(out, settings, network, estimator, models[network], inputs, units, indices, progress)
        rule = DEFAULT_RULES[estimator]
        points = knowledge_points(measured["entropy"], foreground[cue], rule.threshold, measured["valid"],
                                  relative=rule.relative, baseline=rule.baseline)
        results.setdefault(network, {})[estimator] = _entry(points, measured)
        panel = panels.setdefault(network, {
            "images": (datasets[cue].images[index].float() / 255).numpy(),
            "masks": masks[cue].numpy(), "indices": indices,
        })
        panel[estimator] = {"entropy": measured["entropy"].numpy(), "points": points.is_point.numpy(),
                            "foreground": points.foreground.numpy(), "defined": points.defined.numpy()}
        bar.update(1)
    bar.close()
    timing["measure_seconds"] = round(time.perf_counter() - tick, 2)

    tick = time.perf_counter()
    figure = out / "validation_maps.png"
    atomic_write_bytes(figure, maps_figure(panels, settings.grid, settings.map_samples, NETWORKS, ESTIMATORS))
    timing["figure_seconds"] = round(time.perf_counter() - tick, 2)
    timing["total_seconds"] = round(time.perf_counter() - began, 2)

    bars = evaluate_bars(results)
    rules = {e: dataclasses.asdict(DEFAULT_RULES[e]) for e in ESTIMATORS}
    summary: dict[str, Any] = {
        **{network: results[network] for network in NETWORKS},
        "bars": bars,
        "all_passed": None if any(b["passed"] is None for b in bars.values()) else all(
            b["passed"] for b in bars.values()),
        "accuracy": {
            **accuracy,
            "note": "background_cue is trained and tested on cue='background' data, whose test split keeps the "
                    "cue (the background colour tells the label in both splits); object_only and random_init on "
                    "cue='object' data. random_init is untrained: chance accuracy is expected.",
        },
        "measurement": {
            "layer": settings.layer,
            "grid": settings.grid,
            "split": "train",
            "indices": indices,
            "labels": [i % settings.num_classes for i in indices],
            "masks_identical_across_cues": masks_identical,
            "foreground_unit_share": {cue: float(fg.float().mean()) for cue, fg in foreground.items()},
            "selection": "training images whose object (family, place, size, angle) is the same under both cues; "
                         "background_cue is measured on the cue='background' rendering, the others on cue='object'",
            "rules": rules,
            "estimator_options": {e: _estimator_options(settings, e) for e in ESTIMATORS},
        },
        "settings": dataclasses.asdict(settings),
        "quick": quick,
        "timing": timing,
        "files": {"json": str(out / "validation.json"), "figure": str(figure),
                  "networks": str(out / "networks")},
    }
    atomic_write_json(out / "validation.json", summary)
    return summary
