"""Stacked PCA at one sensing point, for the teacher and for the student
(Lee, Song, AAAI 2021, Eq. 1-7 and 16-17).

A ``SensingPoint`` holds what the point needs across batches: the second
PCA's statistics (an ``IncrementalPCA`` fitted on the teacher, or none for the
per-batch "PCA-PCA" ablation of Table 5) and, when the student's channel
count differs from the teacher's, a 1x1 convolution that maps the student's
map to the teacher's channels. Eq. 17 projects the student with the teacher's
D x k components, so the channel counts must agree; the paper does not say
how its cross-architecture rows (Table 3) reconcile them, and the connector is
our choice, trained with the student like FitNets' regressor. Maps of
different spatial sizes are pooled to the smaller, since Eq. 16 projects the
student's map on the teacher's HW-dimensional left singular vector.

Per batch, the teacher's side (no gradient):

    F_T -> first PC p_T, left vector u_T (Eq. 1-3) -> p̄_T (Eq. 4)
        -> [IPCA update] -> C_T = (p̄_T - μ) V (Eq. 5-6)

and the student's (differentiable):

    F_S -> p_S = u_Tᵀ F_S / ||u_Tᵀ F_S|| (Eq. 16) -> p̄_S -> C_S = (p̄_S - μ) V (Eq. 17)
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.distill.base import as_map
from kdlens.distill.iep.spca import (
    IncrementalPCA,
    PCAStats,
    batch_pca,
    first_principal_components,
    project,
    stereographic,
    student_principal_vectors,
)
from kdlens.errors import UsageError

SECOND_PCA = ("ipca", "pca")


class TeacherSense(NamedTuple):
    components: Tensor  # (N, k): C_T of Eq. 5
    left: Tensor  # (N, HW): the sign-corrected u_T that Eq. 16 projects the student on
    stats: PCAStats  # the second PCA's μ and V the student is projected with (Eq. 17)


class SensingPoint(nn.Module):
    """SPCA at one sensing point; ``teacher(f_t)`` then ``student(f_s, sense)``."""

    def __init__(
        self,
        teacher_shape: tuple[int, ...],
        student_shape: tuple[int, ...],
        second_pca: str = "ipca",
        momentum: Optional[float] = 0.9,
    ) -> None:
        """``teacher_shape`` and ``student_shape``: (C, H, W) or (C,) of one
        sample's feature at the point."""
        super().__init__()
        teacher_channels, student_channels = teacher_shape[0], student_shape[0]
        self.size = (min([*teacher_shape[1:2], *student_shape[1:2]], default=1),
                     min([*teacher_shape[2:3], *student_shape[2:3]], default=1))
        if second_pca not in SECOND_PCA:
            raise UsageError(f"second_pca = {second_pca!r}: expected one of {SECOND_PCA}")
        if teacher_channels < 2:
            raise UsageError(
                f"a sensing point with {teacher_channels} teacher channel(s): expected at least 2, "
                "so that the second PCA keeps D/2 >= 1 components"
            )
        self.channels = teacher_channels
        self.components = teacher_channels // 2  # Eq. 6: the top half
        self.second_pca = second_pca
        self.pca = IncrementalPCA(teacher_channels, momentum=momentum) if second_pca == "ipca" else None
        self.connector = (
            nn.Conv2d(student_channels, teacher_channels, 1, bias=False) if student_channels != teacher_channels else None
        )

    def teacher(self, feature: Tensor, *, update: bool) -> TeacherSense:
        """The teacher's compressed components; ``update`` folds the batch into
        the IPCA statistics first (the second PCA of the current batch)."""
        with torch.no_grad():
            feature = self._pooled(feature.detach())
            if feature.shape[1] != self.channels:
                raise UsageError(
                    f"teacher feature with {feature.shape[1]} channels: expected {self.channels}, as at set-up"
                )
            first = first_principal_components(feature)
            plane = stereographic(first.vector)
            if self.pca is None:
                stats = batch_pca(plane, self.components)
            else:
                if update or not self.pca.fitted:
                    self.pca.update(plane)
                stats = self.pca.stats()
            return TeacherSense(project(plane, stats), first.left, stats)

    def student(self, feature: Tensor, sense: TeacherSense) -> Tensor:
        """The student's compressed components with the teacher's u, μ and V (Eq. 16-17)."""
        feature = self._pooled(feature)
        if self.connector is not None:
            feature = self.connector(feature)
        if feature.shape[1] != self.channels:
            raise UsageError(
                f"student feature with {feature.shape[1]} channels: expected {self.channels} (the teacher's) "
                "or the count the point was set up with"
            )
        plane = stereographic(student_principal_vectors(feature, sense.left))
        return project(plane, sense.stats)

    def _pooled(self, feature: Tensor) -> Tensor:
        """A map at the point's common (smaller) spatial size."""
        feature = as_map(feature)
        return feature if tuple(feature.shape[2:]) == self.size else F.adaptive_avg_pool2d(feature, self.size)
