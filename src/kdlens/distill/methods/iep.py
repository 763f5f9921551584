"""Interpretable embedding procedure (IEP) knowledge transfer,

    Lee, Song. "Interpretable Embedding Procedure Knowledge Transfer via Stacked
    Principal Component Analysis and Graph Neural Network." AAAI 2021.

At L sensing points (by default the end of every resolution stage, the
models' ``stage1`` ... ``stageL``) the teacher's maps are compressed by
stacked PCA (``kdlens.distill.iep.sensing``); between each two adjacent
points an MPNN (``kdlens.distill.iep.mpnn``), trained on the teacher first,
estimates the affinity at l+1 from the components at l and l+1. Its estimate
is K^int, its messages K^alt (Eq. 14-15). The student goes through the same
SPCA with the teacher's statistics and the same, frozen, MPNN, and learns

    L^int = KLD(σ(K^T,int) || σ(K^S,int))            (Eq. 18)
    L^alt = ||K^S,alt - K^T,alt||_1 / N²              (Eq. 19)

summed over the L-1 pairs, next to its task loss, each term's gradient
clipped to the task gradient's norm (Eq. 20-21; ``gradient_control``, see
``kdlens.distill.iep.gradients``).

Options, with the paper's ablations:

- ``knowledge``: ``["int", "alt"]`` (IEP), ``["int"]`` or ``["alt"]``
  (Table 4's K^int / K^alt columns).
- ``second_pca``: ``"ipca"`` (IEP) or ``"pca"``, a per-batch PCA (Table 5).
- ``iterations``: message-passing iterations I (Table 6; 2 by default).
- ``gradient_control``: ``"clip"`` (default, the clip-down reading of Eq.
  21), ``"literal"`` (Eq. 21 as printed) or ``"off"`` (the plain sum).
- ``mpnn_epochs``, ``mpnn_lr``: the MPNN's training on the teacher (passes
  over the training set, Adam). The paper defers these to its supplement;
  see the defaults below.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod, TeacherBatches
from kdlens.distill.iep.gradients import MODES, SCOPES
from kdlens.distill.iep.mpnn import EmbeddingProcedureMPNN, MPNNOutput, alteration_loss, interim_loss, mpnn_loss
from kdlens.distill.iep.sensing import SECOND_PCA, SensingPoint, TeacherSense
from kdlens.distill.iep.spca import affinity

KNOWLEDGE = ("int", "alt")
GRADIENT_CONTROL = (*MODES, "off")


def _points(points: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
    if points is None:
        return None
    points = tuple(points)
    if len(points) < 2 or len(set(points)) != len(points):
        raise ValueError(f"points = {list(points)!r}: expected at least two distinct sensing points")
    return points


@METHODS.register("iep")
class EmbeddingProcedureTransfer(DistillationMethod):
    # Taps several sensing points, not a comparison's one ``layer``.
    sensing_points = True

    def __init__(
        self,
        points: Optional[Sequence[str]] = None,
        knowledge: Sequence[str] = KNOWLEDGE,
        second_pca: str = "ipca",
        iterations: int = 2,
        ipca_momentum: float = 0.9,
        mpnn_epochs: int = 5,
        mpnn_lr: float = 1e-3,
        gradient_control: str = "clip",
        clip_scope: str = "parameter",
    ) -> None:
        super().__init__()
        knowledge = tuple(dict.fromkeys(knowledge))
        if not knowledge or set(knowledge) - set(KNOWLEDGE):
            raise ValueError(f"knowledge = {list(knowledge)!r}: expected a non-empty subset of {list(KNOWLEDGE)}")
        if second_pca not in SECOND_PCA:
            raise ValueError(f"second_pca = {second_pca!r}: expected one of {SECOND_PCA}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ValueError(f"iterations = {iterations!r}: expected a positive integer")
        if not 0 < ipca_momentum <= 1:
            raise ValueError(f"ipca_momentum = {ipca_momentum!r}: expected 0 < momentum <= 1")
        if not (isinstance(mpnn_epochs, int) and mpnn_epochs >= 0):
            raise ValueError(f"mpnn_epochs = {mpnn_epochs!r}: expected an integer >= 0")
        if not mpnn_lr > 0:
            raise ValueError(f"mpnn_lr = {mpnn_lr!r}: expected > 0")
        if gradient_control not in GRADIENT_CONTROL:
            raise ValueError(f"gradient_control = {gradient_control!r}: expected one of {GRADIENT_CONTROL}")
        if clip_scope not in SCOPES:
            raise ValueError(f"clip_scope = {clip_scope!r}: expected one of {SCOPES}")
        self.requested_points = _points(points)
        self.layers = self.requested_points or ()
        self.knowledge = knowledge
        self.second_pca = second_pca
        self.iterations = iterations
        self.ipca_momentum = float(ipca_momentum)
        self.mpnn_epochs = mpnn_epochs
        self.mpnn_lr = float(mpnn_lr)
        self.gradient_control = gradient_control
        self.clip_scope = clip_scope
        self.points = nn.ModuleList()
        self.mpnns = nn.ModuleList()
        # The MPNN's mean loss per epoch on the teacher, checkpointed with the method.
        self.register_buffer("mpnn_history", torch.full((mpnn_epochs,), float("nan")))

    def extra_repr(self) -> str:
        return (f"points={list(self.layers)}, knowledge={list(self.knowledge)}, second_pca={self.second_pca!r}, "
                f"gradient_control={self.gradient_control!r}")

    # -- life cycle ---------------------------------------------------------

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        """Resolve the sensing points: the given ones, else every stage end of
        the two networks (which must then have as many stages)."""
        if self.requested_points is not None:
            points = self.requested_points
        else:
            s_points, t_points = student.stage_names, teacher.stage_names
            if s_points != t_points:
                raise ValueError(
                    f"iep: the student has {len(s_points)} stages and the teacher {len(t_points)}; "
                    "expected as many, or give options.points (e.g. [stage2, stage3, stage4])"
                )
            points = t_points
        if len(points) < 2:
            raise ValueError(f"iep: sensing points {list(points)}: expected at least two")
        self.layers = tuple(points)

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        if len(self.layers) < 2:
            raise RuntimeError("iep has no sensing points; call bind(student, teacher) or give points")
        self.points = nn.ModuleList(
            SensingPoint(tuple(teacher[name].shape[1:]), tuple(student[name].shape[1:]),
                         second_pca=self.second_pca, momentum=self.ipca_momentum)
            for name in self.layers
        )
        self.mpnns = nn.ModuleList(
            EmbeddingProcedureMPNN(self.points[l].components, self.points[l + 1].components, iterations=self.iterations)
            for l in range(len(self.layers) - 1)
        )
        self._freeze_mpnns()

    def fit_teacher(self, batches: TeacherBatches, teacher: nn.Module) -> None:
        """Train the MPNNs on the teacher's components (Eq. 13), folding every
        batch into the IPCA statistics on the way; then freeze them."""
        self._require_setup()
        for p in self.mpnns.parameters():
            p.requires_grad_(True)
        self.mpnns.train()
        optimizer = torch.optim.Adam(self.mpnns.parameters(), lr=self.mpnn_lr)
        try:
            for epoch in range(self.mpnn_epochs):
                total, count = 0.0, 0
                for features in batches():
                    senses = self._teacher_senses(features, update=True)
                    loss = sum(
                        mpnn_loss(affinity(senses[l + 1].components), mpnn(senses[l].components, senses[l + 1].components).affinity)
                        for l, mpnn in enumerate(self.mpnns)
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, count = total + loss.item(), count + 1
                self.mpnn_history[epoch] = total / max(count, 1)
        finally:
            self._freeze_mpnns()

    @property
    def mpnn_losses(self) -> list[float]:
        """The MPNN's mean loss (Eq. 13, summed over the pairs) per epoch on the teacher."""
        return [float(v) for v in self.mpnn_history if not torch.isnan(v)]

    def _freeze_mpnns(self) -> None:
        for p in self.mpnns.parameters():
            p.requires_grad_(False)
        self.mpnns.eval()

    def train(self, mode: bool = True) -> "EmbeddingProcedureTransfer":
        super().train(mode)
        if not any(p.requires_grad for p in self.mpnns.parameters()):
            self.mpnns.eval()  # frozen: batch norm on its running statistics
        return self

    def trainable_parts(self) -> list[nn.Module]:
        """The student-side connectors (none when the channel counts match)."""
        return [point.connector for point in self.points if point.connector is not None]

    def _require_setup(self) -> None:
        if len(self.points) != len(self.layers) or not self.layers:
            raise RuntimeError("iep is not set up; call setup() with a batch of features first")

    # -- knowledge ----------------------------------------------------------

    def _teacher_senses(self, teacher: Mapping[str, Tensor], *, update: bool) -> list[TeacherSense]:
        return [point.teacher(teacher[name], update=update) for name, point in zip(self.layers, self.points)]

    def teacher_knowledge(self, teacher: Mapping[str, Tensor], *, update: bool = False) -> tuple[list[TeacherSense], list[MPNNOutput]]:
        """The teacher's SPCA per point and the MPNN's K^int / K^alt per pair."""
        self._require_setup()
        senses = self._teacher_senses(teacher, update=update)
        with torch.no_grad():
            outputs = [mpnn(senses[l].components, senses[l + 1].components) for l, mpnn in enumerate(self.mpnns)]
        return senses, outputs

    def student_knowledge(self, student: Mapping[str, Tensor], senses: Sequence[TeacherSense]) -> tuple[list[Tensor], list[MPNNOutput]]:
        """The student's components per point (with the teacher's statistics) and its K^int / K^alt per pair."""
        components = [point.student(student[name], sense) for name, point, sense in zip(self.layers, self.points, senses)]
        outputs = [mpnn(components[l], components[l + 1]) for l, mpnn in enumerate(self.mpnns)]
        return components, outputs

    def loss_terms(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], targets: Optional[Tensor] = None
    ) -> dict[str, Tensor]:
        """{"int": L^int, "alt": L^alt} (the selected knowledge), summed over the pairs.
        In training mode the teacher's batch updates the IPCA statistics first."""
        senses, teacher_out = self.teacher_knowledge(teacher, update=self.training)
        _, student_out = self.student_knowledge(student, senses)
        terms: dict[str, Tensor] = {}
        if "int" in self.knowledge:
            terms["int"] = sum(interim_loss(s.affinity, t.affinity) for s, t in zip(student_out, teacher_out))
        if "alt" in self.knowledge:
            terms["alt"] = sum(alteration_loss(s.messages, t.messages) for s, t in zip(student_out, teacher_out))
        return terms

    @property
    def controls_gradients(self) -> bool:
        return self.gradient_control != "off"

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], targets: Optional[Tensor] = None
    ) -> Tensor:
        """The plain sum of the terms (what ``gradient_control: off`` trains on)."""
        return sum(self.loss_terms(student, teacher, targets).values())
