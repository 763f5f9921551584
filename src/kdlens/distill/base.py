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

    def features(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], *, same_shape: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The student's and the (detached) teacher's feature at the method's
        one layer; with ``same_shape`` a mismatch is a one-line error."""
        (layer,) = self.layers
        f_s, f_t = student[layer], teacher[layer].detach()
        if same_shape and f_s.shape != f_t.shape:
            raise ValueError(
                f"layer {layer!r}: student feature {tuple(f_s.shape)} and teacher feature "
                f"{tuple(f_t.shape)} differ; expected equal shapes"
            )
        return f_s, f_t
