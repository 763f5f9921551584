"""Datasets that return (image, label, foreground mask) samples.

``DATASETS.build(name, split=..., **kwargs)`` makes one by its registered
name: "synthetic" (default, no download), "cub", "folder".
"""

from __future__ import annotations

from kdlens.data.base import MaskedDataset, Sample, denormalize, fraction_indices, fraction_subset, normalize
from kdlens.data.catalog import DATASETS
from kdlens.data.cub import CubDataset
from kdlens.data.folder import MaskedImageFolder
from kdlens.data.synthetic import SyntheticShapes


__all__ = [
    "Sample", "MaskedDataset", "fraction_subset", "fraction_indices", "normalize", "denormalize",
    "SyntheticShapes", "CubDataset", "MaskedImageFolder", "DATASETS",
]
