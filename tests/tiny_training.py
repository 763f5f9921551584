"""A tiny data set and model for tests of the training loop (tests/train, tests/data)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from kdlens.data.base import Sample


class TinySet(Dataset):
    def __init__(self, n: int = 24, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 4, 4, generator=generator)
        self.labels = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.images[index], int(self.labels[index]), torch.ones(4, 4, dtype=torch.bool))


def two_layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 3))
