"""Deterministic randomness that does not depend on how a run got here.

Each epoch re-seeds every generator from ``(seed, role, epoch)``, so an epoch
run after a resume draws the same shuffles and dropout masks as it would have
in an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *parts: object) -> int:
    text = "/".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a fresh generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
