"""The paper's three training protocols (Sec. 4.1 of the knowledge-points paper).

- teacher: from scratch on the full training set;
- baseline: from scratch on a random fraction of it (``data.student_fraction``,
  10% in the paper), same architecture;
- student: on the same fraction, by feature distillation from layer l of the
  trained teacher: first the layers up to and including l are trained with the
  distillation loss alone, then the layers above l with the classification
  loss alone, the layers up to l frozen. l = fc3 distils from the output and has
  no second phase.

The student and the baseline start from the same initial weights, so the only
difference between them is how they were taught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import Dataset

from kdlens.builders import build_datasets, build_network, resolve_device, student_split
from kdlens.config import ExperimentConfig, dump_config, parse_config
from kdlens.data.augment import augmentation
from kdlens.distill import METHODS
from kdlens.errors import ConfigError, KdlensError, TeacherNotTrained, UsageError
from kdlens.models import NamedLayerModel
from kdlens.store import RunDirectory, load_checkpoint_file, load_weights
from kdlens.train.joint import prepare_method
from kdlens.train.loop import Phase, train_phases

EpochCallback = Optional[Callable[[int], None]]


def _classification_phase(name: str, model: NamedLayerModel, optim, trainable, trained_layers) -> Phase:
    def objective(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels)

    return Phase(name, optim, trainable, objective, trained_layers=trained_layers)


def _num_classes(dataset: Dataset) -> int:
    return len(dataset.classes)


def train_from_scratch(
    role: str, config: ExperimentConfig, run: RunDirectory, *, progress: bool = True,
    on_epoch_end: EpochCallback = None, datasets: Optional[tuple[Dataset, Dataset]] = None,
) -> NamedLayerModel:
    """The teacher (full data) or the baseline (the student's fraction)."""
    if role not in ("teacher", "baseline"):
        raise UsageError(f"role = {role!r}: expected 'teacher' or 'baseline'")
    full_train, test = datasets or build_datasets(config)
    train_set = full_train if role == "teacher" else student_split(config, full_train)
    model_config = config.resolved_teacher_model if role == "teacher" else config.model
    model = build_network(model_config, config, _num_classes(full_train), init="teacher" if role == "teacher" else "student")
    optim = getattr(config, role)
    phase = _classification_phase("train", model, optim, [model], model.layer_names)
    train_phases(
        model, [phase], train_set, test, run.role(role), seed=config.seed, role=role,
        device=resolve_device(config.device), progress=progress, on_epoch_end=on_epoch_end,
        augment=augmentation(config.data),
    )
    return model


def load_teacher(config: ExperimentConfig, run: RunDirectory, num_classes: int) -> NamedLayerModel:
    """The trained teacher: ``student.teacher_checkpoint`` or this run's last teacher epoch.

    Either file is read as data only and must fit the configured teacher model
    (:func:`~kdlens.store.load_checkpoint_file`, :func:`~kdlens.store.load_weights`):
    a teacher checkpoint may come from anyone, and unpickling it as code would
    run whatever it names."""
    path: Path
    if config.student.teacher_checkpoint is not None:
        path = Path(config.student.teacher_checkpoint)
        kind = "student.teacher_checkpoint"
    else:
        store = run.role("teacher")
        latest = store.latest()
        if latest is None or latest < config.teacher.epochs:
            raise TeacherNotTrained(
                f"the teacher in {run.root} is not trained (last epoch {latest}, expected "
                f"{config.teacher.epochs}); train it first (train: [teacher, ...]) or set student.teacher_checkpoint"
            )
        path = store.path(latest)
        kind = "teacher checkpoint"
    state = load_checkpoint_file(path, kind=kind)
    model_config = config.resolved_teacher_model
    teacher = build_network(model_config, config, num_classes, init="teacher")
    # a run checkpoint holds the weights under "model"; a bare state dict is the weights
    weights = state["model"] if "model" in state else state
    load_weights(teacher, weights, source=f"{kind} {str(path)!r}",
                 model_name=f"{model_config.arch} (width {model_config.width:g}, the teacher model)")
    return teacher


def train_student(
    config: ExperimentConfig, run: RunDirectory, *, teacher: Optional[NamedLayerModel] = None,
    progress: bool = True, on_epoch_end: EpochCallback = None,
    datasets: Optional[tuple[Dataset, Dataset]] = None,
) -> NamedLayerModel:
    full_train, test = datasets or build_datasets(config)
    num_classes = _num_classes(full_train)
    device = resolve_device(config.device)
    if teacher is None:
        teacher = load_teacher(config, run, num_classes)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build_network(config.model, config, num_classes, init="student")
    layer = config.student.layer
    method = METHODS.build(config.student.method, layer=layer, **config.student.method_options)

    probe = full_train[0].image.unsqueeze(0)
    with torch.no_grad():
        f_t = teacher.cpu().forward_to(probe, layer)
        f_s = student.eval().forward_to(probe, layer)
    teacher.to(device)
    student.to(device)
    if f_t.shape != f_s.shape and config.student.method == "feature_mse":
        raise ConfigError(
            f"student.layer = {layer!r}: teacher feature {tuple(f_t.shape[1:])} and student feature "
            f"{tuple(f_s.shape[1:])} differ; expected equal shapes (match model widths at this layer)"
        )
    train_set = student_split(config, full_train)
    store = run.role("student")
    prepare_method(method, student, teacher, train_set, device, seed=config.seed, role="student",
                   fresh=store.latest() is None)

    def distill(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher.features(images, method.layers)
        return method(student.features(images, method.layers), target, labels)

    below = student.stages_up_to(layer)
    above = student.stages_above(layer)
    below_names = student.layer_names[: len(below)]
    phases = [Phase("distill", config.student.distill, [*below, *method.trainable_parts()], distill,
                    trained_layers=below_names)]
    if above:
        phases.append(_classification_phase(
            "classify", student, config.student.classify, above, student.layer_names[len(below):]
        ))
    train_phases(
        student, phases, train_set, test, store,
        seed=config.seed, role="student", device=device, progress=progress, on_epoch_end=on_epoch_end,
        extra_modules={"method": method}, augment=augmentation(config.data),
    )
    return student


def _same_config(existing: str, text: str) -> bool:
    """Whether a run directory's config text, read by this kdlens, is the config ``text``."""
    try:
        return dump_config(parse_config(yaml.safe_load(existing)), training_only=True) == text
    except (KdlensError, yaml.YAMLError):
        return False


def train_roles(
    config: ExperimentConfig, out: str | Path, roles: Optional[list[str]] = None, *, progress: bool = True,
    datasets: Optional[tuple[Dataset, Dataset]] = None,
) -> RunDirectory:
    """Train every role the config names (teacher first), resuming what exists.
    The device and the data are checked before anything is written to ``out``."""
    resolve_device(config.device)
    datasets = datasets or build_datasets(config)
    run = RunDirectory(out)
    text = dump_config(config, training_only=True)
    run.initialise(text, config.seed, same=lambda existing: _same_config(existing, text))
    teacher = None
    for role in [r for r in ("teacher", "baseline", "student") if r in (roles or config.train)]:
        if role == "student":
            train_student(config, run, teacher=teacher, progress=progress, datasets=datasets)
        else:
            model = train_from_scratch(role, config, run, progress=progress, datasets=datasets)
            if role == "teacher" and config.student.teacher_checkpoint is None:
                teacher = model
    return run
