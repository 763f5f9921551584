"""The optimizer (SGD or Adam) and its learning-rate schedule, from an :class:`OptimConfig`."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from kdlens.config import OptimConfig


def build_optimizer(
    config: OptimConfig, parameters: Iterable[nn.Parameter]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the phase has no trainable parameters")
    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    elif config.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler
