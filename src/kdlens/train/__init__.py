from kdlens.train.loop import Phase, train_phases
from kdlens.train.protocols import (
    build_datasets,
    build_network,
    load_teacher,
    resolve_device,
    student_split,
    train_from_scratch,
    train_roles,
    train_student,
)

__all__ = [
    "Phase", "train_phases", "build_datasets", "build_network", "load_teacher", "resolve_device",
    "student_split", "train_from_scratch", "train_roles", "train_student",
]
