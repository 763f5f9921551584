"""Joint distillation: the student's whole network trained at once on the task
loss plus a method's distillation loss,

    L = CE(student(x), y) + L_method(f_S(x), f_T(x))

(only L_method when the method already contains the cross-entropy, as Hinton
KD does). This is the protocol of the IE-KD paper and of the methods it
compares with (KD, AT, FT, OD), unlike the knowledge-points paper's two-phase
feature distillation (``kdlens.train.protocols.train_student``). Without a
method it is plain training from scratch, the comparison's baseline.

A method that ``controls_gradients`` (IEP) has each of its loss terms'
gradients on the student's parameters rescaled against the task gradient's
norm before they are summed (Eq. 20-21 of the IEP paper,
``kdlens.distill.iep.gradients``); its own connectors, which the task does
not reach, get the plain sum of the terms' gradients.

The method is set up under a seed derived from ``(seed, role, "method")``
before every start and resume; its one-off teacher preparation (FT's
paraphraser, OD's margins) runs on a fresh start only and is checkpointed
with the student from epoch 0 on.

Training runs in ``kdlens.train.loop.train_phases``, which stops a run whose
loss or weights stop being finite (:class:`~kdlens.errors.TrainingDiverged`).
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdlens.config import OptimConfig
from kdlens.distill import DistillationMethod
from kdlens.distill.iep.gradients import combine_gradients, loss_gradients
from kdlens.errors import UsageError
from kdlens.models import NamedLayerModel
from kdlens.seeding import derive_seed, seed_everything
from kdlens.store import CheckpointStore
from kdlens.train.balance import GradientBalance
from kdlens.train.loop import Phase, train_phases


def teacher_batches(
    teacher: NamedLayerModel, layers: tuple[str, ...], dataset: Dataset, device: torch.device,
    *, batch_size: int = 64, seed: int = 0,
) -> Callable[[], Iterator[Mapping[str, Tensor]]]:
    """A re-iterable of the teacher's features over ``dataset`` (a fresh shuffle
    per pass, from ``seed``), computed in eval mode without gradients."""
    passes = iter(range(1 << 30))

    def batches() -> Iterator[Mapping[str, Tensor]]:
        generator = torch.Generator().manual_seed(derive_seed(seed, "teacher-pass", next(passes)))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                            drop_last=len(dataset) % batch_size == 1)
        teacher.eval()
        for images, _, _ in loader:
            with torch.no_grad():
                features = teacher.features(images.to(device), layers)
            yield features  # outside no_grad: the consumer trains on these

    return batches


def prepare_method(
    method: DistillationMethod, student: NamedLayerModel, teacher: NamedLayerModel, train_set: Dataset,
    device: torch.device, *, seed: int, role: str, fresh: bool,
) -> None:
    """``bind``, ``setup`` from one batch (seeded), then ``fit_teacher`` on a fresh start."""
    method.bind(student, teacher)
    probe = torch.stack([train_set[i].image for i in range(min(2, len(train_set)))]).to(device)
    was_training = student.training
    with torch.no_grad():
        student.eval(), teacher.eval()
        f_s = student.features(probe, method.layers)
        f_t = teacher.features(probe, method.layers)
    student.train(was_training)
    seed_everything(derive_seed(seed, role, "method"))
    method.setup(f_s, f_t)
    method.to(device)
    if fresh:
        method.fit_teacher(teacher_batches(teacher, method.layers, train_set, device, seed=derive_seed(seed, role)),
                           teacher)


def train_jointly(
    student: NamedLayerModel,
    train_set: Dataset,
    test_set: Dataset,
    store: CheckpointStore,
    optim: OptimConfig,
    *,
    seed: int,
    role: str,
    device: torch.device,
    method: Optional[DistillationMethod] = None,
    teacher: Optional[NamedLayerModel] = None,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[int], None]] = None,
    augment: Optional[Callable[[Tensor], Tensor]] = None,
    balance: Optional[GradientBalance] = None,
) -> list[dict]:
    """Train (or resume) ``student`` on CE [+ the method's loss]; returns the history.
    ``augment`` changes each training batch (``train_phases``), the teacher's input too.
    ``balance`` caps the method's loss against the task loss (``kdlens.train.balance``;
    not for a method that controls its gradients itself)."""
    student.to(device)
    if method is None:
        def objective(images: Tensor, labels: Tensor) -> Tensor:
            return F.cross_entropy(student(images), labels)

        phase = Phase("train", optim, [student], objective, trained_layers=student.layer_names)
        return train_phases(student, [phase], train_set, test_set, store, seed=seed, role=role, device=device,
                            progress=progress, on_epoch_end=on_epoch_end, augment=augment)
    if teacher is None:
        raise UsageError(f"method {type(method).__name__} needs a teacher; got none")
    teacher.to(device).eval()
    frozen = [p for p in teacher.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        return _distil(student, teacher, method, train_set, test_set, store, optim, seed=seed, role=role,
                       device=device, progress=progress, on_epoch_end=on_epoch_end, augment=augment,
                       balance=balance)
    finally:
        for p in frozen:  # the caller's teacher is left as it came
            p.requires_grad_(True)


class LossTerms(NamedTuple):
    task: Tensor
    distillation: dict[str, Tensor]


def student_and_others(student: nn.Module, params: list[nn.Parameter]) -> tuple[list, list]:
    """``params`` split into the student's own and the rest (a method's connectors)."""
    ids = {id(p) for p in student.parameters()}
    return [p for p in params if id(p) in ids], [p for p in params if id(p) not in ids]


def controlled_backward(method: DistillationMethod, student: nn.Module) -> Callable[[LossTerms, list], Tensor]:
    """The ``Phase.backward`` of a gradient-controlled method: returns the
    unclipped total loss for the log."""
    def backward(terms: LossTerms, params: list[nn.Parameter]) -> Tensor:
        theta, others = student_and_others(student, params)
        losses = list(terms.distillation.values())
        # one backward pass per term, over the student and the connectors at once
        per_term = [loss_gradients(loss, theta + others) for loss in losses]
        grads = combine_gradients(loss_gradients(terms.task, theta), [g[: len(theta)] for g in per_term],
                                  mode=method.gradient_control, scope=method.clip_scope)
        for p, g in zip(theta, grads):
            p.grad = g
        for i, p in enumerate(others, start=len(theta)):
            present = [g[i] for g in per_term if g[i] is not None]
            p.grad = sum(present[1:], present[0]) if present else None
        return (terms.task + sum(losses, torch.zeros((), device=terms.task.device))).detach()

    return backward


def _distil(student, teacher, method, train_set, test_set, store, optim, *, seed, role, device, progress,
            on_epoch_end, augment=None, balance=None) -> list[dict]:
    if method.includes_task_loss and method.weight_warmup_epochs:
        raise UsageError(f"{type(method).__name__} holds the task loss itself; a loss warm-up "
                         f"({method.weight_warmup_epochs} epochs) would scale the cross-entropy too: expected 0")
    prepare_method(method, student, teacher, train_set, device, seed=seed, role=role, fresh=store.latest() is None)
    layers = method.layers

    def forward(images: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The student's logits and features, and the teacher's features (no gradients)."""
        with torch.no_grad():
            target = teacher.features(images, layers)
        logits, features = student.forward_with_features(images, layers)
        return logits, features, target

    def distill(images: Tensor, labels: Tensor) -> Tensor:
        logits, features, target = forward(images)
        loss = method(features, target, labels)
        if method.includes_task_loss:
            return loss
        return F.cross_entropy(logits, labels) + method.loss_scale * loss

    def distill_terms(images: Tensor, labels: Tensor) -> LossTerms:
        logits, features, target = forward(images)
        terms = method.loss_terms(features, target, labels)
        return LossTerms(F.cross_entropy(logits, labels), {k: method.loss_scale * v for k, v in terms.items()})

    def balanced_terms(images: Tensor, labels: Tensor) -> tuple[Tensor, float, Tensor]:
        logits, features, target = forward(images)
        task_weight, loss = method.distillation_terms(features, target, labels)
        return F.cross_entropy(logits, labels), task_weight, method.loss_scale * loss

    def balanced_backward(terms: tuple[Tensor, float, Tensor], params: list) -> Tensor:
        task, task_weight, loss = terms
        return balance.backward(task, loss, *student_and_others(student, params), task_weight=task_weight)

    extra = {"method": method}
    if balance is not None and method.controls_gradients:
        raise UsageError(f"{type(method).__name__} controls its gradients itself; expected no gradient balance")
    if method.controls_gradients:
        if method.includes_task_loss:
            raise ValueError(f"{type(method).__name__}: gradient control needs the task loss apart from the terms")
        phase = Phase("distill", optim, [student, *method.trainable_parts()], distill_terms,
                      trained_layers=student.layer_names, backward=controlled_backward(method, student),
                      on_epoch_start=method.start_epoch)
    elif balance is not None:
        phase = Phase("distill", optim, [student, *method.trainable_parts()], balanced_terms,
                      trained_layers=student.layer_names, backward=balanced_backward,
                      on_epoch_start=method.start_epoch)
        extra["balance"] = balance
    else:
        phase = Phase("distill", optim, [student, *method.trainable_parts()], distill,
                      trained_layers=student.layer_names, on_epoch_start=method.start_epoch)
    return train_phases(student, [phase], train_set, test_set, store, seed=seed, role=role, device=device,
                        progress=progress, on_epoch_end=on_epoch_end, extra_modules=extra,
                        augment=augment)
