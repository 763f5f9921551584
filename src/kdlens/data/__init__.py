"""Datasets that return (image, label, foreground mask) samples.

``DATASETS.build(name, split=..., **kwargs)`` makes one by its registered
name: "synthetic" (default, no download), "cub", "folder", "cifar10",
"cifar100" (all-True masks: ``has_foreground_masks = False``), and the point-cloud
datasets "point_shapes" (no download) and "modelnet40". Point-cloud samples
reuse ``Sample``: ``image`` is the cloud, float32 (N, 3), and ``mask`` is bool
(N,), True on the object's points. Text datasets, "sentences" (no download)
and "sst2", give ``image`` as (2, T) long, token ids and word indices, and
``mask`` (T,) bool, True on the pieces of foreground words; "squad" (SQuAD
v1.1 question answering) gives ``image`` as (3, T) long, token ids, word
indices and segments, ``mask`` True on the pieces of the answer words, and
the answer span as one class of max_tokens ** 2.
"""

from __future__ import annotations

from kdlens.data.base import MaskedDataset, Sample, denormalize, fraction_indices, fraction_subset, normalize
from kdlens.data.catalog import DATASETS
from kdlens.data.cifar import Cifar10, Cifar100
from kdlens.data.cub import CubDataset
from kdlens.data.folder import MaskedImageFolder
from kdlens.data.modelnet import ModelNet40
from kdlens.data.point_background import attach_background, to_unit_sphere
from kdlens.data.point_shapes import PointShapes
from kdlens.data.sentences import SyntheticSentences
from kdlens.data.squad import SQuAD
from kdlens.data.sst2 import SST2
from kdlens.data.synthetic import SyntheticShapes
from kdlens.data.text_dataset import TextDataset


__all__ = [
    "Sample", "MaskedDataset", "fraction_subset", "fraction_indices", "normalize", "denormalize",
    "SyntheticShapes", "CubDataset", "MaskedImageFolder", "Cifar10", "Cifar100", "DATASETS",
    "PointShapes", "ModelNet40", "attach_background", "to_unit_sphere",
    "TextDataset", "SyntheticSentences", "SST2", "SQuAD",
]
