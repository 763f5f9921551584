from kdlens.distill import methods  # noqa: F401  (registers the methods)
from kdlens.distill.base import METHODS, DistillationMethod

__all__ = ["METHODS", "DistillationMethod"]
