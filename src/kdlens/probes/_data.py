"""The deterministic evaluation subset the dataset-driven probes share."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from kdlens.errors import UsageError


def first_batches(
    dataset: Dataset, max_samples: int, batch_size: int, device: torch.device | str
) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, labels) batches of the first ``min(max_samples, len(dataset))``
    samples, in order, on ``device``. Samples are ``(image, label, mask)``
    triples (``kdlens.data.base.Sample``); the mask is dropped."""
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise UsageError(f"max_samples = {max_samples!r}: expected an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size = {batch_size!r}: expected an integer >= 1")
    count = min(max_samples, len(dataset))
    if count == 0:
        raise UsageError("the dataset is empty: expected at least one sample")
    loader = DataLoader(Subset(dataset, range(count)), batch_size=batch_size, shuffle=False)
    for images, labels, *_ in loader:
        yield images.to(device), torch.as_tensor(labels).long().to(device)
