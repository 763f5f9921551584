from kdlens.train.loop import Phase, train_phases
from kdlens.train.protocols import load_teacher, train_from_scratch, train_roles, train_student

__all__ = ["Phase", "train_phases", "load_teacher", "train_from_scratch", "train_roles", "train_student"]
