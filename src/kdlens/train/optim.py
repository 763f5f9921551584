"""The optimizer (SGD, Adam or AdamW) and its learning-rate schedule (with an optional linear warm-up), from an :class:`OptimConfig`."""

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
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    warmup = min(config.warmup_epochs, config.epochs)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs - warmup))
    elif config.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if warmup:
        # linear warm-up over the first epochs: lr / (k + 1), 2 lr / (k + 1), ..., then the schedule
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, scheduler], milestones=[warmup])
    return optimizer, scheduler
