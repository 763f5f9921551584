"""IEP knowledge of a finished comparison, for the IEP paper's Fig. 5 and for
checking that the transfer worked.

For each IEP student (first seed, main sample rate) the method is rebuilt
from its checkpoint (the teacher's IPCA statistics and the trained, frozen
MPNN), and on a batch of test images sorted by class it gives, per sensing
point, the teacher's and the student's compressed components C and
affinities A (Eq. 7), and per pair of adjacent points the alteration K^alt
(Eq. 15). The figures show K^alt as Σ_i E(m^i_vw), the sum over iterations
of each message's mean over the edge channels: since the readout is the
mean, that is exactly how much the message passing moves the estimated
affinity of v and w from the previous stage's.

It also measures how close each student of the comparison comes to the
teacher's knowledge on that batch: L^int and L^alt (Eq. 18-19) through the
same statistics and MPNN, for the IEP student and for every other student
whose channels match the teacher's at the sensing points (one that needs a
connector has no trained one).
"""

from __future__ import annotations

from typing import Any

import torch

from kdlens.builders import resolve_device
from kdlens.compare.config import MethodEntry
from kdlens.compare.runner import STUDENT_ROLE, Comparison
from kdlens.distill.iep.black_box import alteration_summary
from kdlens.distill.iep.spca import affinity
from kdlens.train.joint import prepare_method


def sorted_test_batch(dataset, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_class`` test images of each class, grouped by class."""
    chosen: dict[int, list[int]] = {}
    for index in range(len(dataset)):
        label = int(dataset[index].label)
        if len(chosen.setdefault(label, [])) < per_class:
            chosen[label].append(index)
        if len(chosen) == len(dataset.classes) and all(len(v) == per_class for v in chosen.values()):
            break
    order = [i for label in sorted(chosen) for i in chosen[label]]
    return torch.stack([dataset[i].image for i in order]), torch.tensor([int(dataset[i].label) for i in order])


def _side(components: list[torch.Tensor], outputs: list) -> dict[str, list[torch.Tensor]]:
    return {
        "C": [c.detach().cpu() for c in components],
        "A": [affinity(c).detach().cpu() for c in components],
        "K_alt": [alteration_summary(o.messages).detach().cpu() for o in outputs],
    }


@torch.no_grad()
def iep_knowledge(comparison: Comparison, entry: MethodEntry, *, per_class: int = 8) -> dict[str, Any]:
    """The teacher's and the IEP student's knowledge on a class-sorted test
    batch, and every matching student's L^int / L^alt against the teacher."""
    config = comparison.config
    if comparison.teacher is None:
        raise ValueError("IEP knowledge needs the comparison's teacher")
    device = resolve_device(config.device)
    seed = config.seeds[0]
    teacher = comparison.teacher.to(device).eval()
    student, state = comparison.load_student(entry, seed)
    student.to(device)
    method = entry.build(config.layer)
    prepare_method(method, student, teacher, comparison.train_set, device, seed=seed, role=STUDENT_ROLE, fresh=False)
    method.load_state_dict(state)
    method.eval()

    images, labels = sorted_test_batch(comparison.datasets[1], per_class)
    images = images.to(device)
    teacher_features = teacher.features(images, method.layers)
    senses, teacher_out = method.teacher_knowledge(teacher_features)
    components, student_out = method.student_knowledge(student.features(images, method.layers), senses)

    distances: dict[str, dict[str, float]] = {}
    needs_connector = any(point.connector is not None for point in method.points)
    for other in config.methods:
        if other.title == entry.title:
            model = student
        elif needs_connector:
            continue  # no trained connector for a student that was not distilled by this method
        else:
            model = comparison.load_student(other, seed)[0].to(device)
        _, outputs = method.student_knowledge(model.features(images, method.layers), senses)
        losses = method.knowledge_losses(outputs, teacher_out)
        distances[other.title] = {"L_int": float(losses["int"]), "L_alt": float(losses["alt"])}
    return {
        "points": list(method.layers),
        "labels": labels.tolist(),
        "classes": list(comparison.datasets[1].classes),
        "teacher": _side([s.components for s in senses], teacher_out),
        "student": _side(components, student_out),
        "distances": distances,
        "mpnn_losses": list(method.mpnn_losses),
    }
