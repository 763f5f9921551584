"""What every kdlens dataset returns, and the paper's data protocol.

Every sample carries its foreground mask because the knowledge-point metrics
split input units into foreground and background.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from kdlens.errors import UsageError


class Sample(NamedTuple):
    """One example. ``image`` is float32 (C, H, W), already normalised with the
    dataset's ``mean``/``std``; ``mask`` is bool (H, W), True on the object."""

    image: Tensor
    label: int
    mask: Tensor


class MaskedDataset(Protocol):
    """The interface the rest of kdlens relies on (datasets are map-style)."""

    classes: Sequence[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(C, H, W) image in [0, 1] -> normalised image."""
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of :func:`normalize`; works on (C, H, W) and (B, C, H, W)."""
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(shape)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(shape)
    return image * s + m


def fraction_indices(n: int, fraction: float, seed: int) -> list[int]:
    """The random subset of ``fraction`` of ``n`` training indices that the
    student and the baseline train on (the paper uses 10%). Sorted, at least one
    index, and the same for equal ``(n, fraction, seed)``."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"fraction = {fraction!r}: expected a number in (0, 1]")
    if n < 1:
        raise UsageError(f"fraction = {fraction!r} of an empty dataset; expected a dataset of at least one sample")
    k = max(1, round(n * fraction))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[:k].tolist())


def fraction_subset(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """``dataset`` itself when ``fraction`` is 1, else a :class:`Subset`."""
    if fraction == 1.0:
        return dataset
    return Subset(dataset, fraction_indices(len(dataset), fraction, seed))
