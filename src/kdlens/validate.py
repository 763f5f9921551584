"""``kdlens validate``: the knowledge-point measurement on planted knowledge.

Knowledge points (paper, Sec. 3.2) are input units (grid cells of an image,
points of a cloud) whose information a layer keeps markedly more than the
background does.  Whether the measurement finds the right units can only be
checked where the answer is known by construction.  :func:`run_validation`
builds three such cases, on images (``modality="image"``, the default) or on
point clouds (``modality="points"``, ``kdlens validate --modality points``):

* ``object_only``: a network trained on ``cue="object"`` data, where the label
  is carried by the object's shape family.  Its fc1 feature must keep the
  object: most knowledge points on the foreground.
* ``background_cue``: the same network trained on ``cue="background"`` data,
  where the background tells the label (in the train AND the test split) and
  the object's family is random.  It has no reason to keep the object.
* ``random_init``: the architecture with its random initial weights, no
  training: a reference of what the measurement gives for a feature that
  learned nothing.

The two kinds:

* images: :class:`~kdlens.data.synthetic.SyntheticShapes` (32x32, no
  distractors) and a VGG-11.  Under ``cue="object"`` the background is random,
  under ``cue="background"`` its colour is the label.  The units are the cells
  of a GxG grid, a cell is foreground when at least half of it is object, and
  the network sees the images normalised as the dataset serves them.
* point clouds: :class:`~kdlens.data.point_shapes.PointShapes` and a PointNet.
  A cloud is the object's points plus background points taken from the union
  of 5 other clouds, overlaid and shuffled in (the paper's construction,
  Sec. 4.1).  Under ``cue="object"`` the background clouds are of families
  other than the label's, as in the paper; under ``cue="background"`` every
  one of them is of the label's family.  A unit is one point (the noise moves
  its xyz), foreground when it is the object's, and the network sees the raw
  coordinates (the clouds lie in the unit sphere; there is no normalisation).
  Note that the paper's construction is not a pure object cue: the background
  clouds are never of the label's family, so they rule classes out.  With 6
  classes (the points demo's) the background alone narrows 6 classes to about
  2.6 on average; with 4 it would leave about 1.4, a strong background cue in
  the ``object_only`` network's data, so the point sizes use 6.

The same N training samples are measured for all three networks.  For a given
index the two cues make the same random draws (the object's geometry; for
clouds also the background clouds' poses and the order of the points) but
the object's family differs (it is random under ``cue="background"``), so the
samples are chosen among the indices whose background-cue object family
equals the label.  There the object is the same under both cues (images: its
shape, place, size and angle, so its mask; clouds: its points), so every
network is measured on the same foreground; ``measurement`` records the check
(``same_object_across_cues``, ``masks_identical_across_cues``).  The
``background_cue`` network is measured on its own (``cue="background"``)
version of those samples, the other two on the ``cue="object"`` version, each
with the foreground of what it is measured on.

Both estimators of information discarding are run (``"paper"``, the authors'
recipe with the entropy weight of
:func:`~kdlens.explain.paper.paper_defaults`, 7 for VGG and PointNet, and
``"converged"``) at layer fc1.  The knowledge points come from
:data:`~kdlens.explain.knowledge_points.DEFAULT_RULES` for images; for clouds
the paper estimator's threshold is the b the paper gives for the architecture
(``paper_defaults(arch)[1]``: 0.5 for PointNet, Sec. 4.1) and the converged
rule is the same as for images.  The acceptance bars, per estimator:

* lambda(object_only) - lambda(background_cue) >= 0.3, and
* N_fg(object_only) >= 2 x N_fg(background_cue), with N_fg(object_only) > 0
  (two zeros pass the inequality but show nothing).

They are reported as they come out; nothing is tuned to make them pass.  The
sizes: :data:`FULL` and :data:`QUICK` for images, :data:`POINTS_FULL` and
:data:`POINTS_QUICK` for clouds.

Output: ``DIR/validation.json`` (``{network: {estimator: {lambda, n_fg,
n_bg, ...}}}`` plus ``bars``, ``accuracy``, ``settings`` (with its
``modality``) ...), ``DIR/validation_maps.png`` (entropy maps on the images,
or 3-D scatters of the clouds) and the networks' weights in ``DIR/networks/``
(reused by a rerun, which gives the same numbers; the per-epoch training
checkpoints, from which an interrupted training resumes, are in
``DIR/training/``).  Measurements are cached in ``DIR/measurements/`` under a
key of every setting they depend on.
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.config import OptimConfig
from kdlens.data.point_shapes import PointShapes
from kdlens.data.sentences import SyntheticSentences
from kdlens.data.synthetic import SyntheticShapes
from kdlens.explain import information_discarding, knowledge_points, summarize_points
from kdlens.explain.knowledge_points import DEFAULT_RULES, PointRule
from kdlens.explain.paper import paper_defaults
from kdlens.modalities import modality_of
from kdlens.modalities.units import UnitMap
from kdlens.models import build_model, input_kind
from kdlens.seeding import derive_seed
from kdlens.report.validation_maps import maps_figure
from kdlens.report.validation_point_maps import point_maps_figure
from kdlens.report.validation_sentence_maps import sentence_validation_figure
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
MODALITIES = ("image", "points", "text")
LAMBDA_GAP = 0.3  # lambda(object_only) - lambda(background_cue) >= this
N_FG_FACTOR = 2.0  # N_fg(object_only) >= this x N_fg(background_cue)
FORMAT_VERSION = 1

# the settings that mean something for one kind only (left out of the other's record)
ONLY = {"image": ("image_size", "grid", "foreground_rule"),
        "points": ("num_points", "background_points", "background_clouds"),
        "text": ("max_tokens", "vocab_size")}


@dataclass(frozen=True)
class ValidationSettings:
    """Everything a validation run depends on.  :data:`FULL` and :data:`QUICK`
    (images), :data:`POINTS_FULL` and :data:`POINTS_QUICK` (point clouds) are
    the command's sizes; tests pass smaller ones.  The defaults are the images'."""

    modality: str = "image"  # "image" or "points"
    arch: str = "vgg11"
    num_classes: int = 4
    image_size: int = 32  # images only
    max_tokens: int = 32  # text only: word pieces a sentence
    vocab_size: int = 900  # text only: the WordPiece vocabulary trained on the sentences
    num_points: int = 64  # clouds only: the object's points
    background_points: int = 64  # clouds only: points attached from the background clouds
    background_clouds: int = 5  # clouds only
    train_samples: int = 3000
    test_samples: int = 1000
    width: float = 0.25
    dropout: float = 0.5
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # sgd (images, clouds) or adamw (text)
    warmup_epochs: int = 0
    seed: int = 0
    layer: str = "fc1"
    samples: int = 8  # N samples measured
    grid: int = 16  # images only
    foreground_rule: float = 0.5  # images only: a cell is foreground when >= half of it is object
    converged_steps: int = 300
    converged_noise_samples: int = 8
    map_samples: int = 3  # samples per network in the figure
    threads: int = 1  # torch intra-op threads during the run (restored after); fixes the summation order

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise UsageError(f"modality = {self.modality!r}: expected one of {', '.join(MODALITIES)}")
        if input_kind(self.arch) != self.modality:
            raise UsageError(f"arch = {self.arch!r} takes {input_kind(self.arch)} inputs; "
                             f"expected a model for modality = {self.modality!r}")
        positive = ("num_classes", "train_samples", "test_samples", "batch_size", "samples", "grid",
                    "converged_steps", "converged_noise_samples", "num_points", "background_points",
                    "background_clouds")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"{name} = {getattr(self, name)!r}: expected an integer >= 1")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise UsageError(f"optimizer = {self.optimizer!r}: expected sgd, adam or adamw")
        if self.warmup_epochs < 0:
            raise UsageError(f"warmup_epochs = {self.warmup_epochs!r}: expected an integer >= 0")
        if self.threads < 1:
            raise UsageError(f"threads = {self.threads!r}: expected an integer >= 1")
        if self.epochs < 0 or self.map_samples < 0:
            raise UsageError(f"epochs = {self.epochs}, map_samples = {self.map_samples}: expected >= 0")
        if self.modality == "image" and not self.grid <= self.image_size:
            raise UsageError(f"grid = {self.grid}: expected at most image_size = {self.image_size}")

    def training_key(self, network: str) -> dict[str, Any]:
        """The settings a network's weights depend on (checked when reused)."""
        if self.modality == "image":
            keys: tuple[str, ...] = ("arch", "num_classes", "image_size", "width", "dropout", "seed")
        elif self.modality == "points":
            keys = ("modality", "arch", "num_classes", "num_points", "background_points", "background_clouds",
                    "width", "dropout", "seed")
        else:
            keys = ("modality", "arch", "num_classes", "max_tokens", "vocab_size", "width", "dropout", "seed")
        if network in TRAINED:
            keys += ("train_samples", "epochs", "batch_size", "lr", "momentum", "weight_decay")
            if self.modality == "text":
                keys += ("optimizer", "warmup_epochs")
        return {"network": network, "cue": CUES[network], **{k: getattr(self, k) for k in keys}}

    def record(self) -> dict[str, Any]:
        """The settings as validation.json gives them: those of this kind."""
        other = [name for kind, names in ONLY.items() if kind != self.modality for name in names]
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in other}


FULL = ValidationSettings()
# quick: the smallest data and width at which the object-only network still
# learns the shapes (about 0.98 test accuracy with 2000 images, 10 epochs)
QUICK = ValidationSettings(train_samples=2000, test_samples=400, width=0.125, samples=4, grid=8,
                           converged_steps=150, map_samples=2)
# point clouds: a PointNet trained with the same loop as the images' VGG (SGD with momentum, cosine
# schedule) at lr 0.01, batch 32 (at 0.05 a PointNet stayed at chance), on the points demo's 6 classes (see
# the module docstring), at width 0.125 and 64 object + 64 background points (the demo's 128 + 125 halved),
# so that the paper estimator (80 steps x 96 noisy copies a cloud, the bulk of the run time) measures a
# cloud in seconds. Trials of the object-only PointNet (test accuracy, chance 1/6): 3000 clouds, 12 epochs:
# 0.54 with 64 + 64 points, 0.64 with 128 + 125 at 2.5x the training time; 6000 clouds, 8 epochs: 0.62.
# POINTS_FULL: test accuracy 0.66 (object only) and 0.79 (background cue) in about 7.7 min on 2 shared
# cores. POINTS_QUICK: 2000 clouds x 8 epochs, 0.41 and 0.61 in about 3 min (3000 clouds: 0.44 and 0.63,
# 30 s more); its 4 measured clouds are few: its lambda gaps are noisy (see tests/test_validate_points.py).
POINTS_FULL = ValidationSettings(modality="points", arch="pointnet", num_classes=6, num_points=64,
                                 background_points=64, background_clouds=5, train_samples=6000, test_samples=600,
                                 width=0.125, epochs=12, batch_size=32, lr=0.01, samples=6, converged_steps=300,
                                 map_samples=3)
POINTS_QUICK = dataclasses.replace(POINTS_FULL, train_samples=2000, test_samples=300, epochs=8, samples=4,
                                   converged_steps=150, map_samples=2)


# text: a small BERT (2 layers, hidden 64) on the built-in sentences, 2 classes, trained as the text demo's
# teacher (4000 sentences, 6 epochs, AdamW with a one-epoch warm-up: transformers' recipe), measured at its
# last hidden layer (the paper's, Sec. 4.1). A first size, 2000 sentences x 4 epochs, gave lambda gaps of
# -0.02 (paper) and 0.14 (converged): both networks fit their data after one epoch, and the object-only
# one then kept few of the sentiment words (0.25 and 0.83 a sentence).
TEXT_FULL = ValidationSettings(modality="text", arch="bert", num_classes=2, max_tokens=32, vocab_size=900,
                               train_samples=4000, test_samples=400, width=1.0, dropout=0.1, epochs=6,
                               batch_size=32, lr=0.001, weight_decay=0.01, optimizer="adamw", warmup_epochs=1,
                               layer="layer2", samples=12, converged_steps=300, map_samples=3)
TEXT_QUICK = dataclasses.replace(TEXT_FULL, train_samples=800, test_samples=200, epochs=3, samples=6,
                                 converged_steps=150, map_samples=2)


def sizes(modality: str, quick: bool) -> ValidationSettings:
    """The command's size for a kind: (POINTS_|TEXT_)QUICK or (POINTS_|TEXT_)FULL."""
    table = {"image": (FULL, QUICK), "points": (POINTS_FULL, POINTS_QUICK), "text": (TEXT_FULL, TEXT_QUICK)}
    if modality not in table:
        raise UsageError(f"modality = {modality!r}: expected one of {', '.join(table)}")
    return table[modality][1 if quick else 0]


# ----------------------------------------------------------------------------- data


class _Images:
    """What the run does with images: SyntheticShapes, normalised inputs, a grid."""

    share_line = "foreground share of the grid cells: {share:.3f} (the lambda of points placed at random)"
    cue_words = "the background colour tells the label"
    selection = ("training images whose object (family, place, size, angle) is the same under both cues; "
                 "background_cue is measured on the cue='background' rendering, the others on cue='object'")

    def dataset(self, settings: ValidationSettings, split: str, cue: str, num_samples: int) -> SyntheticShapes:
        return SyntheticShapes(split=split, num_samples=num_samples, image_size=settings.image_size,
                               num_classes=settings.num_classes, seed=settings.seed, distractors=0, cue=cue)

    def object_family(self, dataset: SyntheticShapes, index: int) -> int:
        return dataset.params(index).object.family

    def inputs(self, dataset: SyntheticShapes, index: Tensor) -> Tensor:
        return dataset.images[index].float() / 127.5 - 1.0  # as SyntheticShapes.__getitem__ (mean = std = 0.5)

    def same_object(self, first: SyntheticShapes, second: SyntheticShapes, index: Tensor) -> bool:
        return bool(torch.equal(first.masks[index], second.masks[index]))  # the object's geometry

    def shown(self, dataset: SyntheticShapes, index: Tensor) -> dict[str, Any]:
        return {"images": (dataset.images[index].float() / 255).numpy()}

    def rules(self, settings: ValidationSettings) -> dict[str, PointRule]:
        return dict(DEFAULT_RULES)

    def figure(self, panels: dict[str, dict[str, Any]], settings: ValidationSettings) -> bytes:
        return maps_figure(panels, settings.grid, settings.map_samples, NETWORKS, ESTIMATORS)


class _Clouds:
    """What the run does with point clouds: PointShapes, raw xyz, one unit a point."""

    share_line = "foreground share of the points: {share:.3f} (the lambda of knowledge points placed at random)"
    cue_words = "the background clouds are of the label's family"
    selection = ("training clouds whose object (family and points) is the same under both cues; background_cue "
                 "is measured on the cue='background' cloud (the background clouds of the label's family), the "
                 "others on cue='object' (background clouds of other families)")

    def dataset(self, settings: ValidationSettings, split: str, cue: str, num_samples: int) -> PointShapes:
        return PointShapes(split=split, num_samples=num_samples, num_points=settings.num_points,
                           num_classes=settings.num_classes, seed=settings.seed,
                           background_points=settings.background_points,
                           background_clouds=settings.background_clouds, cue=cue)

    def object_family(self, dataset: PointShapes, index: int) -> int:
        return int(dataset.object_families[index])

    def inputs(self, dataset: PointShapes, index: Tensor) -> Tensor:
        return dataset.points[index]  # as PointShapes.__getitem__: no normalisation

    def same_object(self, first: PointShapes, second: PointShapes, index: Tensor) -> bool:
        """The object's points are the same set in both (the order of the points may differ)."""
        return all(torch.equal(_sorted_rows(first.points[i][first.masks[i]]),
                               _sorted_rows(second.points[i][second.masks[i]])) for i in index.tolist())

    def shown(self, dataset: PointShapes, index: Tensor) -> dict[str, Any]:
        return {"clouds": dataset.points[index].numpy()}

    def rules(self, settings: ValidationSettings) -> dict[str, PointRule]:
        return architecture_rules(settings)

    def figure(self, panels: dict[str, dict[str, Any]], settings: ValidationSettings) -> bytes:
        return point_maps_figure(panels, settings.map_samples, NETWORKS, ESTIMATORS, settings.layer)


def architecture_rules(settings: ValidationSettings) -> dict[str, PointRule]:
    """The paper's b for the architecture (Sec. 4.1: 0.5 for PointNet, 0.2 for BERT), the converged rule as for images."""
    return {"paper": PointRule(paper_defaults(settings.arch)[1]), "converged": DEFAULT_RULES["converged"]}


def _sorted_rows(points: Tensor) -> Tensor:
    """The rows of (n, 3) ``points`` in lexicographic order."""
    order = np.lexsort(points.numpy().T[::-1])
    return points[torch.from_numpy(order)]


class _Sentences:
    """What the run does with text: SyntheticSentences, a BERT, one unit a word.

    Under ``cue="object"`` the planted sentiment words tell the label (the data's
    ``cue="sentiment"``); under ``cue="background"`` a neutral filler word tied
    to the label does and the sentiment words' polarity is random (``"filler"``).
    For one index both cues make the same draws (the filler words and the
    places), so the measured sentences are those whose random polarity under
    the filler cue equals the label: there the sentiment words are the label's
    in both. The foreground is the sentiment words in both."""

    share_line = "foreground share of the words: {share:.3f} (the lambda of knowledge points placed at random)"
    cue_words = "a neutral filler word tied to the label"
    selection = ("training sentences whose planted sentiment words have the label's polarity under both cues; "
                 "background_cue is measured on the cue='filler' sentence (with the label's filler word), the "
                 "others on cue='sentiment'")
    data_cues = {"object": "sentiment", "background": "filler"}

    def dataset(self, settings: ValidationSettings, split: str, cue: str, num_samples: int) -> SyntheticSentences:
        return SyntheticSentences(split=split, num_samples=num_samples, seed=settings.seed,
                                  cue=self.data_cues[cue], max_tokens=settings.max_tokens,
                                  vocab_size=settings.vocab_size)

    def object_family(self, dataset: SyntheticSentences, index: int) -> int:
        return int(dataset.polarities[index])

    def inputs(self, dataset: SyntheticSentences, index: Tensor) -> Tensor:
        return dataset.tokens[index]

    def same_object(self, first: SyntheticSentences, second: SyntheticSentences, index: Tensor) -> bool:
        """The same sentiment words at the same places."""
        def planted(dataset: SyntheticSentences, i: int) -> list:
            return [(k, word) for k, (word, on) in enumerate(zip(dataset.words(i), dataset.foreground_words(i))) if on]
        return all(planted(first, i) == planted(second, i) for i in index.tolist())

    def shown(self, dataset: SyntheticSentences, index: Tensor) -> dict[str, Any]:
        return {"words": [dataset.words(i) for i in index.tolist()]}

    def rules(self, settings: ValidationSettings) -> dict[str, PointRule]:
        return architecture_rules(settings)

    def model_options(self, settings: ValidationSettings) -> dict[str, Any]:
        return {"vocab_size": settings.vocab_size, "max_tokens": settings.max_tokens,
                "hidden": 64, "layers": 2, "heads": 2}

    def figure(self, panels: dict[str, dict[str, Any]], settings: ValidationSettings) -> bytes:
        return sentence_validation_figure(panels, settings.map_samples, NETWORKS, ESTIMATORS, settings.layer)


KINDS = {"image": _Images(), "points": _Clouds(), "text": _Sentences()}


def _dataset(settings: ValidationSettings, split: str, cue: str, num_samples: int):
    return KINDS[settings.modality].dataset(settings, split, cue, num_samples)


def measured_indices(background_set, count: int) -> list[int]:
    """The first training indices, ``count`` of them, spread over the classes in
    turn, whose background-cue object has the label's family, so that the object
    (its mask, or its points) is the same under both cues."""
    kind = KINDS[modality_of(background_set).name]
    classes = len(background_set.classes)
    per_class = math.ceil(count / classes)
    taken: dict[int, int] = {}
    chosen: list[int] = []
    for index in range(len(background_set)):
        label = index % classes
        if taken.get(label, 0) < per_class and kind.object_family(background_set, index) == label:
            chosen.append(index)
            taken[label] = taken.get(label, 0) + 1
            if len(chosen) == count:
                return chosen
    raise UsageError(
        f"only {len(chosen)} of {len(background_set)} training samples have the same object under both cues; "
        f"expected samples = {count}: use more training samples or fewer measured ones"
    )


# ----------------------------------------------------------------------------- networks


def _build(settings: ValidationSettings, network: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(settings.seed, "validate", "init", network))
        image_size = settings.image_size if settings.modality == "image" else None
        options = getattr(KINDS[settings.modality], "model_options", lambda _: {})(settings)
        return build_model(settings.arch, num_classes=settings.num_classes, image_size=image_size,
                           width=settings.width, dropout=settings.dropout, **options)


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
                            momentum=settings.momentum, weight_decay=settings.weight_decay, schedule="cosine",
                            optimizer=settings.optimizer, warmup_epochs=settings.warmup_epochs)
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
           "layer": settings.layer, "grid": settings.grid if settings.modality == "image" else None,
           "indices": indices, "format": FORMAT_VERSION}
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
        kind = KINDS[summary.get("settings", {}).get("modality", "image")]
        lines.append(kind.share_line.format(share=share))
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
                   settings: Optional[ValidationSettings] = None,
                   modality: Optional[str] = None) -> dict[str, Any]:
    """Train (or reuse) the three networks, measure them, write
    ``validation.json`` and ``validation_maps.png`` into ``out``; returns the
    JSON's content.  ``modality`` ("image" by default, or "points") and
    ``quick`` choose the size (:func:`sizes`); ``settings`` overrides it (and
    then names the modality itself: a different ``modality`` is an error).

    Torch runs with ``settings.threads`` intra-op threads (1 by default, then
    restored): these models are tiny, a second thread on a shared machine
    mostly fights other processes (a training step ran ~40x slower), and a
    fixed thread count fixes the order of float sums, so reruns agree."""
    if settings is None:
        settings = sizes(modality or "image", quick)
    elif modality is not None and modality != settings.modality:
        raise UsageError(f"modality = {modality!r} but the settings are for {settings.modality!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _run(Path(out), quick, progress, settings)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, quick: bool, progress: bool, settings: ValidationSettings) -> dict[str, Any]:
    began = time.perf_counter()
    timing: dict[str, float] = {}
    kind = KINDS[settings.modality]

    tick = time.perf_counter()
    data: dict[str, dict[str, Any]] = {}
    datasets: dict[str, Any] = {}
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
    index = torch.tensor(indices)
    masks = {cue: datasets[cue].masks[index] for cue in datasets}
    masks_identical = bool(torch.equal(masks["object"], masks["background"]))
    same_object = kind.same_object(datasets["object"], datasets["background"], index)
    rules = kind.rules(settings)
    foreground: dict[str, Tensor] = {}
    present: dict[str, Tensor] = {}  # which units each sample has (all, but for sentences of fewer words)

    tick = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    panels: dict[str, dict[str, Any]] = {}
    bar = _tqdm(total=len(NETWORKS) * len(ESTIMATORS), desc="measure", unit="run", disable=not progress)
    for network in NETWORKS:
        cue = CUES[network]
        # what the noise goes on and its units depend on the network, not on the estimator
        tokens = kind.inputs(data[cue]["train"], index)
        with torch.no_grad():
            inputs = modality.analysed(models[network], tokens)  # text: the network's word embeddings
        units = modality.batch_units(tokens, inputs, settings.grid)
        foreground[cue] = modality.foreground(masks[cue], units, settings.foreground_rule)
        present[cue] = UnitMap(units, inputs.shape).present
        panel = panels.setdefault(network, {
            **kind.shown(datasets[cue], index), "masks": masks[cue].numpy(), "indices": indices,
        })
        for estimator in ESTIMATORS:
            bar.set_postfix(network=network, estimator=estimator)
            measured = _measure(out, settings, network, estimator, models[network], inputs, units, indices,
                                progress)
            rule = rules[estimator]
            points = knowledge_points(measured["entropy"], foreground[cue], rule.threshold, measured["valid"],
                                      relative=rule.relative, baseline=rule.baseline, present=present[cue])
            results.setdefault(network, {})[estimator] = _entry(points, measured)
            panel[estimator] = {"entropy": measured["entropy"].numpy(), "points": points.is_point.numpy(),
                                "foreground": points.foreground.numpy(), "defined": points.defined.numpy()}
            bar.update(1)
    bar.close()
    timing["measure_seconds"] = round(time.perf_counter() - tick, 2)

    tick = time.perf_counter()
    figure = out / "validation_maps.png"
    atomic_write_bytes(figure, kind.figure(panels, settings))
    timing["figure_seconds"] = round(time.perf_counter() - tick, 2)
    timing["total_seconds"] = round(time.perf_counter() - began, 2)

    bars = evaluate_bars(results)
    summary: dict[str, Any] = {
        **{network: results[network] for network in NETWORKS},
        "bars": bars,
        "all_passed": None if any(b["passed"] is None for b in bars.values()) else all(
            b["passed"] for b in bars.values()),
        "accuracy": {
            **accuracy,
            "note": f"background_cue is trained and tested on cue='background' data, whose test split keeps the "
                    f"cue ({kind.cue_words} in both splits); object_only and random_init on cue='object' data. "
                    "random_init is untrained: chance accuracy is expected.",
        },
        "measurement": {
            "layer": settings.layer,
            **({"grid": settings.grid} if settings.modality == "image"
               else {"units": modality.describe_units(settings.grid)}),
            "split": "train",
            "indices": indices,
            "labels": [i % settings.num_classes for i in indices],
            "masks_identical_across_cues": masks_identical,
            "same_object_across_cues": same_object,
            "foreground_unit_share": {cue: float((fg & present[cue]).sum() / present[cue].sum())
                                      for cue, fg in foreground.items()},
            "selection": kind.selection,
            "rules": {e: dataclasses.asdict(rules[e]) for e in ESTIMATORS},
            "estimator_options": {e: _estimator_options(settings, e) for e in ESTIMATORS},
        },
        "settings": settings.record(),
        "quick": quick,
        "timing": timing,
        "files": {"json": str(out / "validation.json"), "figure": str(figure),
                  "networks": str(out / "networks")},
    }
    atomic_write_json(out / "validation.json", summary)
    return summary
