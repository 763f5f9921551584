"""Datasets that return (image, label, foreground mask) samples.

``build_dataset(name, split, **kwargs)`` (or ``DATASETS.build``) makes one by
its registered name: "synthetic" (default, no download), "cub", "folder".
"""

from __future__ import annotations

from torch.utils.data import Dataset

from kdlens.data.base import MaskedDataset, Sample, denormalize, fraction_indices, fraction_subset, normalize
from kdlens.data.catalog import DATASETS
from kdlens.data.cub import CubDataset
from kdlens.data.folder import MaskedImageFolder
from kdlens.data.synthetic import SyntheticShapes


def build_dataset(name: str, split: str, **kwargs) -> Dataset:
    """The registered dataset ``name`` for ``split`` ("train" or "test")."""
    return DATASETS.build(name, split=split, **kwargs)


__all__ = [
    "Sample", "MaskedDataset", "fraction_subset", "fraction_indices", "normalize", "denormalize",
    "SyntheticShapes", "CubDataset", "MaskedImageFolder", "DATASETS", "build_dataset",
]
