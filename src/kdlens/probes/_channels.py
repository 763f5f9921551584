"""Validation of channel-index arguments shared by the probes."""

from __future__ import annotations

import torch
from torch import Tensor

from kdlens.errors import UsageError


def channel_index(index: Tensor, channels: int, name: str = "channels") -> Tensor:
    """``index`` as a 1-D LongTensor of distinct indices into ``channels`` channels.

    Raises ``ValueError`` for an empty, non-1-D, boolean or floating tensor, for
    an index outside ``[0, channels - 1]`` and for a repeated index (a repeat
    would count a channel twice).
    """
    index = torch.as_tensor(index)
    if index.dim() != 1 or index.numel() == 0 or index.dtype == torch.bool or index.is_floating_point():
        raise UsageError(
            f"{name} has dtype {index.dtype} and shape {tuple(index.shape)}: "
            "expected a non-empty 1-D integer tensor of channel indices"
        )
    index = index.long().cpu()
    if int(index.min()) < 0 or int(index.max()) >= channels:
        bad = index[(index < 0) | (index >= channels)].tolist()
        raise UsageError(f"{name} has indices {bad}: expected channel indices in [0, {channels - 1}]")
    if index.unique().numel() != index.numel():
        raise UsageError(f"{name} repeats channel indices: expected distinct indices")
    return index
