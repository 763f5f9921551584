"""The interface of a distillation method.

A method is an ``nn.Module`` whose ``forward`` takes the student's and the
teacher's captured features (and the targets where it needs them) and returns a
scalar loss. It declares the layers it needs in ``layers`` and owns any
trainable connector it requires, so the trainer only has to optimise
``method.parameters()`` alongside the student's.
"""

from __future__ import annotations

from typing import Mapping, Optional

from torch import Tensor, nn

from kdlens.registry import Registry

METHODS: Registry["DistillationMethod"] = Registry("distillation method")


class DistillationMethod(nn.Module):
    layers: tuple[str, ...] = ()

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        raise NotImplementedError
