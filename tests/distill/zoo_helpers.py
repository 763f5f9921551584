"""What the KD-zoo method tests share: one real joint training step of a tiny
student against a tiny teacher, checking that nothing reaches the teacher."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlens.distill.base import DistillationMethod
from kdlens.models import build_model

NUM_CLASSES = 3


def _images(count: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (count,), generator=g)


def joint_step_leaves_teacher_alone(
    method: DistillationMethod, *, batch_size: int = 8, seed: int = 0, lr: float = 0.05,
    arch: str = "vgg11", student_width: float = 0.125, teacher_width: float = 0.25,
) -> float:
    """One SGD step of CE + ``method`` for a ``arch`` student (width 0.125)
    from a teacher of width 0.25, at 32x32 on random images, the way
    ``kdlens.train.joint`` runs it (``bind``, ``setup``, ``fit_teacher``, then
    the student and ``trainable_parts()`` optimised together).

    Harder than the trainer: the teacher's parameters keep ``requires_grad``
    and its features are computed *with* autograd on, so only the method's own
    ``.detach()`` keeps gradients out of it. Asserts that every teacher
    parameter's ``.grad`` is None and its state (weights and batch-norm
    statistics) unchanged, that the student's parameters did get gradients and
    moved, and that the loss is finite. Returns the distillation loss."""
    torch.manual_seed(seed)
    student = build_model(arch, NUM_CLASSES, image_size=32, width=student_width)
    teacher = build_model(arch, NUM_CLASSES, image_size=32, width=teacher_width).eval()
    assert all(p.requires_grad for p in teacher.parameters())
    teacher_before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in student.parameters()]
    images, labels = _images(batch_size, seed + 1)

    method.bind(student, teacher)
    layers = method.layers
    with torch.no_grad():
        student.eval()
        probe_s = student.features(images[:2], layers)
        probe_t = teacher.features(images[:2], layers)
        fit_batches = [teacher.features(images, layers)]
    student.train()
    method.setup(probe_s, probe_t)
    method.fit_teacher(lambda: iter(fit_batches), teacher)
    method.train()

    params = [*student.parameters(), *(p for part in method.trainable_parts() for p in part.parameters())]
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in params}, "a teacher parameter is among the trained ones"
    optimizer = torch.optim.SGD([p for p in params if p.requires_grad], lr=lr)

    target = teacher.features(images, layers)  # autograd on, on purpose
    logits, features = student.forward_with_features(images, layers)
    loss: Optional[Tensor] = method(features, target, labels)
    assert loss is not None and loss.dim() == 0 and torch.isfinite(loss), loss
    total = loss if method.includes_task_loss else loss + F.cross_entropy(logits, labels)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()

    assert all(p.grad is None for p in teacher.parameters()), "a gradient reached the teacher"
    after = teacher.state_dict()
    assert after.keys() == teacher_before.keys()
    for key, value in teacher_before.items():
        assert torch.equal(after[key], value), f"teacher {key} changed"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert any(not torch.equal(p.detach(), b) for p, b in zip(student.parameters(), student_before))
    return float(loss.detach())
