"""The student's accuracy while it is being distilled, read through the teacher.

During the distillation phase the student's layers above the distilled layer
l are still untrained, so its own test accuracy says nothing about what its
layers up to l have learned. What those layers are taught is to mimic the
teacher's feature at l, which the teacher's own layers above l turn into a
prediction: the accuracy of "student up to l, then teacher above l" is what
the paper's Fig. 2 needs on its x axis for those epochs.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdlens.builders import build_network
from kdlens.store import RunDirectory
from kdlens.train.evaluate import evaluate


def mimic_accuracies(
    run: RunDirectory, config, layer: str, student_states: Mapping[int, Mapping[str, Tensor]], test_set: Dataset
) -> dict[int, Optional[float]]:
    """Test accuracy of each student state (its parameters up to ``layer``)
    under the teacher's last checkpoint above ``layer``; None for every epoch
    when the teacher is missing or its shapes at ``layer`` differ from the student's."""
    teacher_store = run.role("teacher")
    latest = teacher_store.latest()
    if latest is None or not student_states:
        return {epoch: None for epoch in student_states}
    teacher_state = teacher_store.load(latest, required=("model",))["model"]
    model = build_network(config.resolved_teacher_model, config, len(test_set.classes), init="teacher")
    results: dict[int, Optional[float]] = {}
    for epoch, lower in student_states.items():
        if any(k not in teacher_state or teacher_state[k].shape != v.shape for k, v in lower.items()):
            return {epoch: None for epoch in student_states}
        model.load_state_dict({**teacher_state, **lower})
        results[epoch] = evaluate(model, test_set, torch.device("cpu"))["accuracy"]
    return results
