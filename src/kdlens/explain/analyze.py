"""Knowledge points over a run's checkpoints, cached in the run directory.

For one role (teacher, baseline, student) and one layer, the information
discarding of a fixed set of samples is computed at each chosen checkpoint and
written to ``RUN/analysis/<layer>-<key>/<role>/epoch_XXX.pt`` (``key`` is a hash
of the estimator and its settings, so other settings never read stale
results), and by shards of a split analysis into ``epoch_XXX.shard<k>.pt``
(``kdlens.explain.shards``). A cached checkpoint is not computed again; asking
for more samples computes only the new ones; an interrupted analysis resumes
where it stopped.

Which samples: training images that the student and the baseline trained on
(the run's ``student_split``; the teacher saw them too), as the authors
analysed training images; ``split="test"`` draws from the test set instead.

Noise: sample i at checkpoint e draws from its own generator, seeded from
(seed, role, e, i), so its answer does not depend on which samples share its
chunk or its shard (``NoiseStreams``); for the paper's recipe it is the answer
of the authors' one-image procedure given the same seed.

Which checkpoints: every one at which the layer's weights changed (a student's
layers up to the distilled layer stay fixed in its classification phase, so
those epochs would repeat the same answer). D_mean, D_var and rho are defined
over every epoch (m_hat is an argmax over epochs and rho's union runs over
all of them), so thinning (``max_epochs``) changes them; it is there for a
quick look only and the summary says when it was used.

Warm starts (converged estimator): each checkpoint after the first may start
from the sigma of the previous analysed one, with ``warm_steps`` steps at the
full lr and the same decay; the first half of them can move log sigma by up
to lr * warm_steps / 2 = 3.75, more than successive checkpoints differ.
``warm_start=False`` starts every checkpoint cold. The paper estimator always
starts cold, as the recipe does.

The weights w of the dynamics metrics (Sec. 3.3) are the parameters of the
stages up to the analysed layer: exactly what determines that layer's feature.
For a student analysed at (or below) its distilled layer these are the layers
trained by distillation.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kdlens.builders import build_datasets, build_network, resolve_device, student_split
from kdlens.config import load_config
from kdlens.explain.dynamics import distance_to_peak, stability, weight_distances
from kdlens.explain.estimator import HALF_LOG_2PIE, check_estimator, information_discarding
from kdlens.explain.knowledge_points import DEFAULT_RULES, PointRule, knowledge_points, summarize_points
from kdlens.explain.mimic import mimic_accuracies
from kdlens.explain.paper import paper_defaults
from kdlens.modalities import modality_of
from kdlens.modalities.units import UnitMap
from kdlens.errors import CheckpointError, MissingFileError, UnknownNameError, UsageError
from kdlens.seeding import derive_seed
from kdlens.store import CheckpointStore, RunDirectory, atomic_torch_save, atomic_write_json, check_weights, load_checkpoint_file

ROLES_ANALYSED = ("teacher", "student", "baseline")  # and "random", the teacher at epoch 0
CACHE_RECORD_KEYS = ("sigma", "valid", "converged", "reason")  # one analysed sample at one checkpoint


@dataclass(frozen=True)
class AnalysisSettings:
    """How knowledge points are measured.

    ``estimator``: "converged" (kdlens's optimum) or "paper" (the authors'
    recipe, whose own settings are fixed; ``entropy_weight`` None takes the
    authors' value for the architecture). ``threshold`` None takes the
    estimator's rule (``DEFAULT_RULES``; b = 0.25 for AlexNet under "paper"),
    ``baseline`` says which H_bar; ``foreground_rule`` is the share of a unit's
    pixels on the object that makes it a foreground unit. Those three do not
    change the cached sigmas. ``steps`` .. ``sigma_max`` are the converged
    estimator's."""

    layer: str = "fc1"
    estimator: str = "converged"
    grid: int = 16
    threshold: Optional[float] = None
    baseline: Literal["sample", "dataset"] = "sample"
    foreground_rule: float = 0.5
    steps: int = 300
    lr: float = 0.05
    warm_start: bool = True
    warm_steps: int = 150
    alpha: float = 2.0
    tau: float = 0.1
    sigma_max: float = 1.0
    noise_samples: int = 8
    entropy_weight: Optional[float] = None
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            check_estimator(self.estimator)
            self.rule("vgg")  # validates threshold and baseline
        except UsageError:
            raise
        except ValueError as exc:  # their messages name the setting and what was expected
            raise UsageError(str(exc)) from None

    def rule(self, arch: str) -> PointRule:
        """The knowledge-point rule for a network of architecture ``arch``."""
        default = DEFAULT_RULES[self.estimator]
        threshold = self.threshold
        if threshold is None:
            threshold = paper_defaults(arch)[1] if self.estimator == "paper" else default.threshold
        return PointRule(threshold, default.relative, self.baseline)

    def engine_options(self, arch: str, warm: bool) -> dict:
        """The keywords of ``information_discarding`` for a cold or warm start."""
        if self.estimator == "paper":
            weight = self.entropy_weight if self.entropy_weight is not None else paper_defaults(arch)[0]
            return {"entropy_weight": weight}
        return {"alpha": self.alpha, "tau": self.tau, "sigma_max": self.sigma_max, "lr": self.lr,
                "noise_samples": self.noise_samples, "steps": self.warm_steps if warm else self.steps}

    def key(self) -> str:
        kept = ("layer", "estimator", "grid", "seed", "batch_size") + (
            ("entropy_weight",) if self.estimator == "paper" else
            ("steps", "lr", "warm_start", "warm_steps", "alpha", "tau", "sigma_max", "noise_samples")
        )
        engine = {k: getattr(self, k) for k in kept}
        engine["noise"] = "per-sample"  # each sample's own stream (NoiseStreams); earlier caches drew per chunk
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
    arch: str = "vgg11"
    phases: list[str] | None = None  # the training phase of each analysed checkpoint
    mimic_accuracy: list[Optional[float]] | None = None  # the student's feature through the teacher's upper layers
    thinned: bool = False  # checkpoints at which the layer changed were left out
    present: Tensor | None = None  # (N, n_units) bool: which units each sample has (None: all)


def analysis_indices(size: int, count: int, seed: int, pool: Optional[Sequence[int]] = None) -> list[int]:
    """A fixed random set of ``count`` sample indices out of ``pool`` (default:
    all ``size``); a larger count extends a smaller one."""
    pool = list(range(size)) if pool is None else list(pool)
    if not 1 <= count <= len(pool):
        raise UsageError(f"samples = {count}: expected between 1 and the {len(pool)} images to draw from")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(derive_seed(seed, "analysis")))
    return [int(pool[i]) for i in order[:count]]


def sample_indices(config, train_set: Dataset, test_set: Dataset, count: int, split: str) -> list[int]:
    """The analysed images of a run: from the student's share of the training
    set (the images the student and the baseline trained on), or from the test set."""
    if split == "test":
        return analysis_indices(len(test_set), count, config.seed)
    shared = student_split(config, train_set)
    pool = getattr(shared, "indices", range(len(train_set)))
    return analysis_indices(len(train_set), count, config.seed, pool)


def _stage_prefixes(model, layer: str) -> tuple[str, ...]:
    if layer not in model.layer_names:
        raise UnknownNameError(
            f"layer = {layer!r}: {type(model).__name__} has no layer {layer!r}; "
            f"expected one of {', '.join(model.layer_names)}"
        )
    names = model.layer_names[: model.layer_names.index(layer) + 1]
    return tuple(f"stages.{name}." for name in names)


def _thin(epochs: list[int], max_epochs: Optional[int]) -> list[int]:
    if max_epochs is None or len(epochs) <= max_epochs:
        return epochs
    if max_epochs < 2:
        raise UsageError(f"max_epochs = {max_epochs}: expected at least 2 (the initialisation and the last)")
    picks = torch.linspace(0, len(epochs) - 1, max_epochs).round().long().unique().tolist()
    return [epochs[i] for i in picks]


class AnalysisCache:
    """The analysed samples of each checkpoint: ``{sample index: record}`` per
    file, rewritten whole (atomically) after every batch, so a killed analysis
    loses at most the batch it was computing."""

    def __init__(self, root: Path, settings: AnalysisSettings) -> None:
        self.root = Path(root) / "analysis" / f"{settings.layer}-{settings.key()}"
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / "settings.json", asdict(settings))

    def path(self, role: str, epoch: int, shard: Optional[int] = None):
        """The file of a checkpoint's records, or of the records shard ``shard`` computed."""
        return self.root / role / (f"epoch_{epoch:03d}.pt" if shard is None else f"epoch_{epoch:03d}.shard{shard}.pt")

    def load(self, role: str, epoch: int) -> dict[int, dict]:
        """The checkpoint's records: its own file's and every shard's (a shard only adds samples)."""
        main = self.path(role, epoch)
        records: dict[int, dict] = {}
        for path in sorted(main.parent.glob(f"epoch_{epoch:03d}.shard*.pt")) + [main]:
            if path.is_file():
                records.update(self._read(path))
        return records

    @staticmethod
    def _read(path) -> dict[int, dict]:
        records = load_checkpoint_file(path, kind="analysis cache file")
        for index, record in records.items():
            if (not isinstance(index, int) or not isinstance(record, dict)
                    or any(k not in record for k in CACHE_RECORD_KEYS)
                    or not isinstance(record["sigma"], torch.Tensor)):
                raise CheckpointError(
                    f"analysis cache file {str(path)!r} has an entry {index!r} that is not a sample record "
                    f"(expected keys {', '.join(CACHE_RECORD_KEYS)}); delete the file to compute it again"
                )
        return records

    def save(self, role: str, epoch: int, records: dict[int, dict], shard: Optional[int] = None) -> None:
        atomic_torch_save(records, self.path(role, epoch, shard))


def _units_of(sigma: Tensor, n: int) -> Tensor:
    """A sample's sigma over ``n`` units: its own, then NaN for the units it lacks (cut when longer)."""
    return nn.functional.pad(sigma[:n], (0, max(0, n - len(sigma))), value=math.nan)


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
    shard: Optional[tuple[int, ...]] = None,
    device: Optional[torch.device] = None,
) -> Optional[RoleAnalysis]:
    """Compute (or read from the cache) the information discarding of
    ``sample_count`` fixed samples of ``split`` at the checkpoints of ``role``.
    ``epochs`` picks checkpoints explicitly (e.g. only the teacher's last);
    ``datasets`` (train, test) saves rebuilding them from the run's config.

    ``shard = (k, n)`` or ``(k, n, turn)``: compute only shard k of n into the
    cache and return None. The samples are cut into batches of
    ``settings.batch_size`` in their fixed order, as an unsharded run cuts
    them, and shard k takes the batches b with (b + turn) mod n = k, at every
    checkpoint (a batch's warm starts stay in one shard; ``turn`` spreads the
    roles' first batches over the shards),
    so that the cache ends up holding what one process would have written;
    an unsharded call then assembles the analysis from it.

    ``device``: where the estimators run (default: the run config's
    ``device``, so ``auto`` takes a GPU when there is one); the cache and the
    returned analysis hold CPU tensors."""
    run = RunDirectory(run) if not isinstance(run, RunDirectory) else run
    if split not in ("train", "test"):
        raise UsageError(f"split = {split!r}: expected 'train' or 'test'")
    config = load_config(run.config_path)
    store = run.role(role)
    if not store.epochs():
        raise MissingFileError(f"{store.checkpoints} has no checkpoints; train the {role} first")
    train_set, test_set = datasets or build_datasets(config)
    dataset = train_set if split == "train" else test_set
    indices = sample_indices(config, train_set, test_set, sample_count, split)
    samples = [dataset[i] for i in indices]
    images = torch.stack([s.image for s in samples])
    masks = torch.stack([s.mask for s in samples])
    modality = modality_of(dataset)
    model_config = config.resolved_teacher_model if role == "teacher" else config.model
    device = resolve_device(config.device) if device is None else torch.device(device)
    model = build_network(model_config, config, len(dataset.classes), init=role)
    arch = model_config.arch
    model_name = f"{arch} (width {model_config.width:g}, the {role} model of {run.config_path})"

    def mimic(states: dict[int, dict]) -> dict[int, float]:
        return mimic_accuracies(run, config, settings.layer, states, test_set)

    return analyze_store(
        store, model, AnalysedSamples(images, masks, indices, modality), settings, AnalysisCache(run.root, settings),
        role=role, arch=arch, model_name=model_name, epochs=epochs, max_epochs=max_epochs, progress=progress,
        shard=shard, device=device, mimic=mimic if role == "student" else None,
    )


@dataclass
class AnalysedSamples:
    """The fixed samples an analysis measures: their inputs and foreground masks
    (CPU), their indices in the dataset, and the dataset's modality."""

    images: Tensor
    masks: Tensor
    indices: list[int]
    modality: object


def analyze_store(
    store: CheckpointStore,
    model: nn.Module,
    samples: AnalysedSamples,
    settings: AnalysisSettings,
    cache: "AnalysisCache",
    *,
    role: str,
    arch: str,
    model_name: str,
    epochs: Optional[Sequence[int]] = None,
    max_epochs: Optional[int] = None,
    progress: bool = True,
    shard: Optional[tuple[int, ...]] = None,
    device: Optional[torch.device] = None,
    mimic: Optional[Callable[[dict[int, dict]], dict[int, float]]] = None,
) -> Optional[RoleAnalysis]:
    """The information discarding of ``samples`` at the checkpoints of one
    checkpoint series (``store``) of networks shaped like ``model``: the core of
    :func:`analyze_role`, for any series (a compared method's student too).
    ``role`` names the series in the cache and seeds its noise; ``mimic``
    (a student in its distillation phase) gives the accuracy of the feature
    read through the teacher's upper layers per epoch. See :func:`analyze_role`
    for ``epochs``, ``max_epochs`` and ``shard``."""
    available = store.epochs()
    if not available:
        raise MissingFileError(f"{store.checkpoints} has no checkpoints; train the {role} first")
    images, masks, indices, modality = samples.images, samples.masks, samples.indices, samples.modality
    device = torch.device("cpu") if device is None else torch.device(device)
    model = model.to(device)
    on_device = images.to(device)  # the units and the foreground are worked out on the CPU copy
    if on_device.dim() == 4:  # images: convolutions run faster channels-last (benchmarks/analysis_throughput.py)
        model = model.to(memory_format=torch.channels_last)
        on_device = on_device.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        shape = modality.analysed(model, on_device).shape  # the weights change per checkpoint, the shape does not
    units = modality.batch_units(images, torch.empty(shape, device="meta"), settings.grid)
    layout = UnitMap(units, shape)
    foreground = modality.foreground(masks, units, settings.foreground_rule)
    prefixes = _stage_prefixes(model, settings.layer)
    parameter_names = [n for n, _ in model.named_parameters() if n.startswith(prefixes)]

    # One pass over every checkpoint: the layer's weights, whether they moved.
    # Each file is data of unknown origin until it has the keys used below and
    # weights of this run's model.
    layer_states, changed, metrics, phases = {}, [], {}, {}
    for epoch in available:
        state = store.load(epoch, required=("model", "metrics"))
        source = f"checkpoint {str(store.path(epoch))!r}"
        check_weights(model, state["model"], source=source, model_name=model_name)
        if not isinstance(state["metrics"], dict) or "test_accuracy" not in state["metrics"]:
            raise CheckpointError(f"{source} has no metrics.test_accuracy; expected a checkpoint written by kdlens train")
        layer_states[epoch] = {k: v for k, v in state["model"].items() if k.startswith(prefixes)}
        metrics[epoch], phases[epoch] = state["metrics"], state.get("phase", "train")
        previous = layer_states.get(changed[-1]) if changed else None
        if previous is None or any(not torch.equal(v, previous[k]) for k, v in layer_states[epoch].items()):
            changed.append(epoch)
    all_distances = weight_distances([layer_states[e] for e in available], parameter_names)
    distance_at = dict(zip(available, all_distances.tolist()))

    if epochs is None:
        chosen = _thin(changed, max_epochs)
        thinned = len(chosen) < len(changed)
    else:
        missing = sorted(set(epochs) - set(available))
        if missing:
            raise UsageError(f"epochs {missing} have no checkpoint in {store.checkpoints}; it has {available}")
        chosen = sorted(set(epochs))
        thinned = False

    weight = settings.engine_options(arch, warm=False).get("entropy_weight")  # None for "converged"
    position = {index: k for k, index in enumerate(indices)}
    rows, previous_records = [], {}
    bar = tqdm(chosen, desc=f"{role} {settings.layer}", unit="ckpt", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        records = cache.load(role, epoch)
        # a record of the paper's recipe holds the entropy weight it was measured with: the
        # architecture's default may differ from the one a cache was written with
        todo = [i for i in indices if i not in records or records[i].get("entropy_weight") != weight]
        chunks = [todo[start : start + settings.batch_size] for start in range(0, len(todo), settings.batch_size)]
        if shard is not None:
            rank, world, turn = (*shard, 0)[:3]
            batches = [indices[start : start + settings.batch_size]
                       for start in range(0, len(indices), settings.batch_size)]
            missing = set(todo)
            mine = [batch for k, batch in enumerate(batches) if (k + turn) % world == rank]
            chunks = [batch for batch in mine if missing & set(batch)]
            todo = [i for batch in chunks for i in batch]
        if todo:
            # Only the stages up to the layer run, and their weights are already in memory.
            model.load_state_dict(layer_states[epoch], strict=False)
            with torch.no_grad():
                analysed = modality.analysed(model, on_device)
            for chunk in chunks:
                warm = (settings.estimator == "converged" and settings.warm_start
                        and all(i in previous_records for i in chunk))
                options = settings.engine_options(arch, warm)
                rows_of_chunk = [position[i] for i in chunk]
                chunk_units = units if layout.shared else units[rows_of_chunk]
                # each sample's own units, and the chunk's: the most any of its samples has
                counts = layout.present[rows_of_chunk].sum(1).tolist()
                if warm:
                    options["init_sigma"] = torch.stack([_units_of(previous_records[i]["sigma"], max(counts))
                                                         for i in chunk])
                result = information_discarding(
                    model, analysed[rows_of_chunk], settings.layer, chunk_units,
                    estimator=settings.estimator, sample_seeds=[derive_seed(settings.seed, role, epoch, i) for i in chunk],
                    **options,
                )
                # each sample's sigma over its own units, so that a record does not depend on
                # which other samples were analysed with it (their sentences may be longer)
                for k, i in enumerate(chunk):
                    records[i] = {
                        "sigma": result.sigma[k, :counts[k]].cpu().clone(), "valid": bool(result.valid[k]),
                        "converged": bool(result.converged[k]), "reason": result.invalid_reason[k],
                        "entropy_weight": weight,
                    }
                if shard is None:
                    cache.save(role, epoch, records)
                else:  # a shard writes only its own samples, into its own file
                    cache.save(role, epoch, {i: records[i] for batch in mine for i in batch if i in records},
                               shard=shard[0])
        rows.append(records)
        previous_records = records
    if shard is not None:
        return None

    # every sample's sigma over all the samples' units (NaN for a unit a sample lacks)
    sigma = torch.stack([torch.stack([_units_of(r[i]["sigma"], layout.n) for i in indices]) for r in rows])
    mimicked = None
    if mimic is not None and any(phases[e] == "distill" for e in chosen):
        accuracies = mimic({e: layer_states[e] for e in chosen if phases[e] == "distill"})
        mimicked = [accuracies.get(e) for e in chosen]
    return RoleAnalysis(
        role=role,
        epochs=list(chosen),
        entropy=sigma.log() + HALF_LOG_2PIE,
        valid=torch.tensor([[r[i]["valid"] for i in indices] for r in rows]),
        foreground=foreground,
        present=layout.present,
        distances=torch.tensor([distance_at[e] for e in chosen], dtype=torch.float64),
        test_accuracy=[metrics[e]["test_accuracy"] for e in chosen],
        indices=indices,
        final_accuracy=metrics[available[-1]]["test_accuracy"],
        arch=arch,
        phases=[phases[e] for e in chosen],
        mimic_accuracy=mimicked,
        thinned=thinned,
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
    final_only: bool = False,
    shard: Optional[tuple[int, int]] = None,
) -> dict[str, RoleAnalysis]:
    """:func:`analyze_role` for every trained role of a run: the teacher at its
    last checkpoint, the student and the baseline over their epochs (at their
    last only with ``final_only``: no dynamics metrics then), and
    "random": the teacher's architecture at its initial weights (epoch 0),
    the reference for "nothing learned". With ``shard = (k, n)`` only shard k
    of n is computed into the cache and the result is empty (see
    :func:`analyze_role`; ``kdlens.explain.shards`` runs the shards)."""
    run = RunDirectory(run) if not isinstance(run, RunDirectory) else run
    if all(run.role(role).latest() is None for role in ROLES_ANALYSED):
        raise MissingFileError(
            f"run {str(run.root)!r} has no checkpoints ({', '.join(ROLES_ANALYSED)}: none trained); train it first "
            f"(kdlens train --config {run.config_path} --out {run.root})"
        )
    if datasets is None:
        datasets = build_datasets(load_config(run.config_path))
    analyses = {}
    # each analysis (teacher, random, student, baseline) starts its batches at the next
    # shard, so that few batches still spread over the shards
    turns = {"teacher": 0, "random": 1, "student": 2, "baseline": 3}

    def sharded(name: str) -> Optional[tuple[int, ...]]:
        return None if shard is None else (*shard[:2], turns[name])

    for role in ROLES_ANALYSED:
        latest = run.role(role).latest()
        if latest is None:
            continue
        common = dict(split=split, max_epochs=max_epochs, datasets=datasets, progress=progress)
        if role == "teacher":
            analyses[role] = analyze_role(run, role, settings, sample_count, epochs=[latest], shard=sharded(role),
                                          **common)
            if 0 in run.role(role).epochs():
                random = analyze_role(run, role, settings, sample_count, epochs=[0], shard=sharded("random"),
                                      **common)
                if shard is not None:
                    continue
                random.role = "random"
                random.final_accuracy = random.test_accuracy[0]  # its own, not the trained teacher's
                analyses["random"] = random
        else:
            analyses[role] = analyze_role(run, role, settings, sample_count,
                                          epochs=[latest] if final_only else None, shard=sharded(role), **common)
    return {} if shard is not None else analyses


def _listed(values: Tensor, defined: Tensor) -> list[Optional[float]]:
    return [float(v) if ok else None for v, ok in zip(values.tolist(), defined.tolist())]


def role_points(analysis: RoleAnalysis, settings: AnalysisSettings) -> list:
    """The knowledge points of every analysed epoch under the settings' rule."""
    rule = settings.rule(analysis.arch)
    return [
        knowledge_points(analysis.entropy[row], analysis.foreground, rule.threshold, valid=analysis.valid[row],
                         relative=rule.relative, baseline=rule.baseline, present=analysis.present)
        for row in range(len(analysis.epochs))
    ]


def summarize_role(analysis: RoleAnalysis, settings: AnalysisSettings) -> dict:
    """The paper's metrics for one role: N_fg, N_bg and lambda at the last
    analysed epoch and their course over epochs; when the initialisation and at
    least two epochs were analysed, also D_mean, D_var (Eq. 8) and rho (Eq. 9).
    ``per_sample`` holds each analysed image's values (None where undefined),
    for the report's bootstrap intervals."""
    points = role_points(analysis, settings)
    rule = settings.rule(analysis.arch)
    per_epoch = []
    for row, (epoch, p) in enumerate(zip(analysis.epochs, points)):
        counts = summarize_points(p)
        entry = {
            "epoch": epoch,
            "phase": analysis.phases[row] if analysis.phases else None,
            "n_fg": counts.n_fg_mean,
            "n_bg": counts.n_bg_mean,
            "lambda": counts.foreground_ratio,
            "samples_without_points": counts.n_without_points,
            "undefined_samples": counts.n_undefined,
            "test_accuracy": analysis.test_accuracy[row],
            "weight_distance": analysis.distances[row].item(),
        }
        if analysis.mimic_accuracy is not None and analysis.mimic_accuracy[row] is not None:
            entry["mimic_accuracy"] = analysis.mimic_accuracy[row]
        per_epoch.append(entry)
    last, final = per_epoch[-1], points[-1]
    total = final.n_fg + final.n_bg
    summary = {
        "epochs": analysis.epochs, "samples": len(analysis.indices), "indices": analysis.indices,
        "n_fg": last["n_fg"], "n_bg": last["n_bg"], "lambda": last["lambda"],
        # The model's own accuracy: a student analysed at its distilled layer
        # stops changing there before its head is trained.
        "accuracy": analysis.final_accuracy, "per_epoch": per_epoch,
        "rule": {"threshold": rule.threshold, "relative": rule.relative, "baseline": rule.baseline},
        "thinned": analysis.thinned,
        "per_sample": {
            "n_fg": _listed(final.n_fg.double(), final.defined),
            "n_bg": _listed(final.n_bg.double(), final.defined),
            "ratio": _listed(final.n_fg.double() / total.clamp(min=1).double(), final.defined & (total > 0)),
        },
    }
    if len(analysis.epochs) >= 3 and analysis.epochs[0] == 0:
        defined = torch.stack([p.defined for p in points]).all(0)
        n_fg = torch.stack([p.n_fg for p in points])
        distance = distance_to_peak(n_fg, analysis.distances)
        rho = stability(torch.stack([p.fg_points & p.defined[:, None] for p in points]))
        d = distance[defined]
        summary.update(d_mean=float(d.mean()) if len(d) else None,
                       d_var=float(d.var(correction=0)) if len(d) else None, rho=rho.mean)
        summary["per_sample"].update(d=_listed(distance, defined), rho=_listed(rho.rho, rho.defined))
    return summary
