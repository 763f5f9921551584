"""Knowledge points over a run's checkpoints, cached in the run directory.

For one role (teacher, baseline, student) and one layer, the information
discarding of a fixed set of samples is computed at each chosen checkpoint and
written to ``RUN/analysis/<layer>-<key>/<role>/epoch_XXX.pt`` (``key`` is a hash
of the engine settings, so other settings never read stale results). A cached
checkpoint is not computed again; asking for more samples computes only the
new ones; an interrupted analysis resumes where it stopped.

Which checkpoints: those at which the layer's weights changed (a student's
layers up to the distilled layer stay fixed in its classification phase, so
those epochs would repeat the same answer), optionally thinned to
``max_epochs`` evenly spaced ones, always with the initialisation and the last.
Successive checkpoints are close, so each is warm-started from the sigma of the
previous analysed one with fewer steps.

The weights w of the dynamics metrics (Sec. 3.3) are the parameters of the
stages up to the analysed layer: exactly what determines that layer's feature.
For a student analysed at (or below) its distilled layer these are the layers
trained by distillation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kdlens.builders import build_datasets, build_network
from kdlens.config import load_config
from kdlens.discarding.dynamics import d_mean_var, stability, weight_distances
from kdlens.discarding.estimator import HALF_LOG_2PIE, information_discarding
from kdlens.discarding.knowledge_points import foreground_ratio, knowledge_points
from kdlens.discarding.units import foreground_units, grid_units, unit_foreground_share
from kdlens.seeding import derive_seed
from kdlens.store import RunDirectory, atomic_torch_save, atomic_write_json

ROLES_ANALYSED = ("teacher", "student", "baseline")


@dataclass(frozen=True)
class AnalysisSettings:
    """How knowledge points are measured. ``threshold`` is the paper's b and
    ``foreground_rule`` the share of a unit's pixels on the object that makes it
    a foreground unit; neither changes the cached sigmas."""

    layer: str = "fc1"
    grid: int = 16
    threshold: float = 0.2
    foreground_rule: float = 0.5
    steps: int = 300
    lr: float = 0.05
    warm_steps: int = 100
    warm_lr: float = 0.01
    alpha: float = 2.0
    tau: float = 0.1
    noise_samples: int = 8
    batch_size: int = 16
    seed: int = 0

    def key(self) -> str:
        engine = {k: v for k, v in asdict(self).items() if k not in ("threshold", "foreground_rule")}
        return hashlib.sha256(json.dumps(engine, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class RoleAnalysis:
    """Per analysed epoch (rows, ascending): entropies, validity, accuracy and
    the cumulative weight distance of the layer's parameters."""

    role: str
    epochs: list[int]
    entropy: Tensor  # (E, N, n_units)
    valid: Tensor  # (E, N)
    foreground: Tensor  # (N, n_units) bool
    distances: Tensor  # (E,) float64
    test_accuracy: list[float]
    indices: list[int]
    final_accuracy: float  # of the role's last checkpoint, analysed or not


def analysis_indices(size: int, count: int, seed: int) -> list[int]:
    """A fixed random set of ``count`` sample indices; a larger count extends a smaller one."""
    if not 1 <= count <= size:
        raise ValueError(f"samples = {count}: expected between 1 and the split's size {size}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(derive_seed(seed, "analysis")))
    return order[:count].tolist()


def _stage_prefixes(model, layer: str) -> tuple[str, ...]:
    names = model.layer_names[: model.layer_names.index(model.check_layer(layer)) + 1]
    return tuple(f"stages.{name}." for name in names)


def _thin(epochs: list[int], max_epochs: Optional[int]) -> list[int]:
    if max_epochs is None or len(epochs) <= max_epochs:
        return epochs
    if max_epochs < 2:
        raise ValueError(f"max_epochs = {max_epochs}: expected at least 2 (the initialisation and the last)")
    picks = torch.linspace(0, len(epochs) - 1, max_epochs).round().long().unique().tolist()
    return [epochs[i] for i in picks]


class _Cache:
    def __init__(self, run: RunDirectory, settings: AnalysisSettings) -> None:
        self.root = run.root / "analysis" / f"{settings.layer}-{settings.key()}"
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / "settings.json", asdict(settings))

    def path(self, role: str, epoch: int):
        return self.root / role / f"epoch_{epoch:03d}.pt"

    def load(self, role: str, epoch: int) -> dict[int, dict]:
        path = self.path(role, epoch)
        return torch.load(path, weights_only=False) if path.is_file() else {}

    def save(self, role: str, epoch: int, records: dict[int, dict]) -> None:
        atomic_torch_save(records, self.path(role, epoch))


def analyze_role(
    run: RunDirectory | str,
    role: str,
    settings: AnalysisSettings,
    sample_count: int = 16,
    *,
    split: str = "train",
    epochs: Optional[Sequence[int]] = None,
    max_epochs: Optional[int] = None,
    datasets: Optional[tuple[Dataset, Dataset]] = None,
    progress: bool = True,
) -> RoleAnalysis:
    """Compute (or read from the cache) the information discarding of
    ``sample_count`` fixed samples of ``split`` at the checkpoints of ``role``.
    ``epochs`` picks checkpoints explicitly (e.g. only the teacher's last);
    ``datasets`` (train, test) saves rebuilding them from the run's config."""
    run = RunDirectory(run) if not isinstance(run, RunDirectory) else run
    if split not in ("train", "test"):
        raise ValueError(f"split = {split!r}: expected 'train' or 'test'")
    config = load_config(run.config_path)
    store = run.role(role)
    available = store.epochs()
    if not available:
        raise FileNotFoundError(f"{store.checkpoints} has no checkpoints; train the {role} first")
    train_set, test_set = datasets or build_datasets(config)
    dataset = train_set if split == "train" else test_set
    indices = analysis_indices(len(dataset), sample_count, config.seed)
    samples = [dataset[i] for i in indices]
    images = torch.stack([s.image for s in samples])
    masks = torch.stack([s.mask for s in samples])
    height, width = images.shape[-2:]
    units = grid_units(height, width, settings.grid)
    foreground = foreground_units(unit_foreground_share(masks, units), settings.foreground_rule)

    model_config = config.resolved_teacher_model if role == "teacher" else config.model
    model = build_network(model_config, config, len(dataset.classes), init=role)
    prefixes = _stage_prefixes(model, settings.layer)
    parameter_names = [n for n, _ in model.named_parameters() if n.startswith(prefixes)]

    # One pass over every checkpoint: the layer's weights, whether they moved.
    layer_states, changed, metrics = {}, [], {}
    for epoch in available:
        state = store.load(epoch)
        layer_states[epoch] = {k: v for k, v in state["model"].items() if k.startswith(prefixes)}
        metrics[epoch] = state["metrics"]
        previous = layer_states.get(changed[-1]) if changed else None
        if previous is None or any(not torch.equal(v, previous[k]) for k, v in layer_states[epoch].items()):
            changed.append(epoch)
    all_distances = weight_distances([layer_states[e] for e in available], parameter_names)
    distance_at = dict(zip(available, all_distances.tolist()))

    if epochs is None:
        chosen = _thin(changed, max_epochs)
    else:
        missing = sorted(set(epochs) - set(available))
        if missing:
            raise ValueError(f"epochs {missing} have no checkpoint in {store.checkpoints}; it has {available}")
        chosen = sorted(set(epochs))

    cache = _Cache(run, settings)
    position = {index: k for k, index in enumerate(indices)}
    rows, previous_records = [], {}
    bar = tqdm(chosen, desc=f"{role} {settings.layer}", unit="ckpt", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        records = cache.load(role, epoch)
        todo = [i for i in indices if i not in records]
        if todo:
            # Only the stages up to the layer run, and their weights are already in memory.
            model.load_state_dict(layer_states[epoch], strict=False)
            for start in range(0, len(todo), settings.batch_size):
                chunk = todo[start : start + settings.batch_size]
                warm = all(i in previous_records for i in chunk)
                result = information_discarding(
                    model, images[[position[i] for i in chunk]], settings.layer, units,
                    alpha=settings.alpha, tau=settings.tau, noise_samples=settings.noise_samples,
                    steps=settings.warm_steps if warm else settings.steps,
                    lr=settings.warm_lr if warm else settings.lr,
                    init_sigma=torch.stack([previous_records[i]["sigma"] for i in chunk]) if warm else None,
                    seed=derive_seed(settings.seed, role, epoch, chunk[0]),
                )
                for k, i in enumerate(chunk):
                    records[i] = {
                        "sigma": result.sigma[k].clone(), "valid": bool(result.valid[k]),
                        "converged": bool(result.converged[k]), "reason": result.invalid_reason[k],
                    }
                cache.save(role, epoch, records)
        rows.append(records)
        previous_records = records

    sigma = torch.stack([torch.stack([r[i]["sigma"] for i in indices]) for r in rows])
    return RoleAnalysis(
        role=role,
        epochs=list(chosen),
        entropy=sigma.log() + HALF_LOG_2PIE,
        valid=torch.tensor([[r[i]["valid"] for i in indices] for r in rows]),
        foreground=foreground,
        distances=torch.tensor([distance_at[e] for e in chosen], dtype=torch.float64),
        test_accuracy=[metrics[e]["test_accuracy"] for e in chosen],
        indices=indices,
        final_accuracy=metrics[available[-1]]["test_accuracy"],
    )


def analyze_run(
    run: RunDirectory | str,
    settings: AnalysisSettings,
    sample_count: int = 16,
    *,
    split: str = "train",
    max_epochs: Optional[int] = None,
    datasets: Optional[tuple[Dataset, Dataset]] = None,
    progress: bool = True,
) -> dict[str, RoleAnalysis]:
    """:func:`analyze_role` for every trained role of a run: the teacher at its
    last checkpoint, the student and the baseline over their epochs."""
    run = RunDirectory(run) if not isinstance(run, RunDirectory) else run
    if datasets is None:
        datasets = build_datasets(load_config(run.config_path))
    analyses = {}
    for role in ROLES_ANALYSED:
        latest = run.role(role).latest()
        if latest is not None:
            analyses[role] = analyze_role(
                run, role, settings, sample_count, split=split, max_epochs=max_epochs, datasets=datasets,
                epochs=[latest] if role == "teacher" else None, progress=progress,
            )
    return analyses


def summarize_role(analysis: RoleAnalysis, settings: AnalysisSettings) -> dict:
    """The paper's metrics for one role: N_fg, N_bg and lambda at the last
    analysed epoch and their course over epochs; when the initialisation and at
    least two epochs were analysed, also D_mean, D_var (Eq. 8) and rho (Eq. 9)."""
    points = [
        knowledge_points(analysis.entropy[row], analysis.foreground, settings.threshold, valid=analysis.valid[row])
        for row in range(len(analysis.epochs))
    ]
    per_epoch = []
    for row, (epoch, p) in enumerate(zip(analysis.epochs, points)):
        used = p.defined
        ratio, excluded = foreground_ratio(p.n_fg[used], p.n_bg[used])
        per_epoch.append({
            "epoch": epoch,
            "n_fg": p.n_fg[used].float().mean().item() if used.any() else None,
            "n_bg": p.n_bg[used].float().mean().item() if used.any() else None,
            "lambda": ratio,
            "samples_without_points": excluded,
            "undefined_samples": int((~used).sum()),
            "test_accuracy": analysis.test_accuracy[row],
            "weight_distance": analysis.distances[row].item(),
        })
    last = per_epoch[-1]
    summary = {
        "epochs": analysis.epochs, "samples": len(analysis.indices),
        "n_fg": last["n_fg"], "n_bg": last["n_bg"], "lambda": last["lambda"],
        # The model's own accuracy: a student analysed at its distilled layer
        # stops changing there before its head is trained.
        "accuracy": analysis.final_accuracy, "per_epoch": per_epoch,
    }
    if len(analysis.epochs) >= 3 and analysis.epochs[0] == 0:
        defined = torch.stack([p.defined for p in points]).all(0)
        n_fg = torch.stack([p.n_fg for p in points])
        d_mean, d_var = d_mean_var(n_fg, analysis.distances, mask=defined)
        rho = stability(torch.stack([p.fg_points & p.defined[:, None] for p in points]))
        summary.update(d_mean=d_mean, d_var=d_var, rho=rho.mean)
    return summary
