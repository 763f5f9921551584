"""The dataset registry, in a module of its own so that each dataset family can
register itself without importing the package that imports it."""

from __future__ import annotations

from kdlens.registry import Registry

DATASETS: Registry = Registry("dataset")
