"""One place per input kind: what its samples hold, what its units are, how
a foreground annotation becomes per-unit labels.

Images (``image.py``) and point clouds (``points.py``) are here; words follow. Each is
a :class:`~kdlens.modalities.base.Modality` registered in ``MODALITIES``. A
dataset names its kind with a ``modality`` attribute (images when it has
none), so the analysis asks the dataset's modality for units instead of
assuming a grid over an image.
"""

from __future__ import annotations

from kdlens.modalities.base import MODALITIES, Modality, modality_of
from kdlens.modalities import image, points, text  # noqa: F401  (register "image", "points" and "text")

__all__ = ["MODALITIES", "Modality", "modality_of"]
