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
  (Table 4's K^int / K^alt columns), ``["int", "alt", "bb"]`` (the
  "IEP+Black-box" column: MHGD with the IEP knowledge as an extra head,
  ``kdlens.distill.iep.black_box``; ``bb_heads`` heads in all) or ``["bb"]``
  (Table 4's K^BB column).
- ``second_pca``: ``"ipca"`` (IEP) or ``"pca"``, a per-batch PCA (Table 5).
- ``iterations``: message-passing iterations I (Table 6; 2 by default).
- ``gradient_control``: ``"clip"`` (default, the clip-down reading of Eq.
  21), ``"literal"`` (Eq. 21 as printed) or ``"off"`` (the plain sum).
- ``mpnn_epochs``, ``mpnn_lr``: the training of the MPNN (and of the MHGD
  graphs) on the teacher, before the student's; passes over the training
  set with Adam. The authors' code trains it for 20 epochs by SGD from lr
  0.1; we default to 5 epochs of Adam at 1e-3, a fraction of the time (on
  compare-iep-synthetic the loss falls from 0.23 to 0.12 in them, by 5 % in
  the last). The IPCA statistics are updated only
  then (as the authors' code does, which freezes the module's statistics
  during the student's training), so the knowledge the MPNN was trained on
  and the targets the student sees come from the same statistics.

Sensing points: by default the end of every resolution stage of the two
networks (``stage1`` ... ``stageL``, post-ReLU); the authors' WRN code taps
the pre-activation input of stages 2 and 3 and the final one, three points.
The KL terms are averaged over the N rows (the authors' code sums them); the
gradient clipping makes the scale matter little.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod, TeacherBatches
from kdlens.distill.iep.black_box import MultiHeadGraph, alteration_summary, black_box_loss
from kdlens.distill.iep.gradients import MODES, SCOPES
from kdlens.distill.iep.mpnn import EmbeddingProcedureMPNN, MPNNOutput, alteration_loss, interim_loss, mpnn_loss
from kdlens.distill.iep.sensing import SECOND_PCA, SensingPoint, TeacherSense
from kdlens.distill.iep.spca import affinity
from kdlens.errors import UsageError

KNOWLEDGE = ("int", "alt", "bb")
IEP_KNOWLEDGE = ("int", "alt")
GRADIENT_CONTROL = (*MODES, "off")


def _points(points: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
    if points is None:
        return None
    points = tuple(points)
    if len(points) < 2 or len(set(points)) != len(points):
        raise UsageError(f"points = {list(points)!r}: expected at least two distinct sensing points")
    return points


@METHODS.register("iep")
class EmbeddingProcedureTransfer(DistillationMethod):
    # Taps several sensing points, not a comparison's one ``layer``.
    sensing_points = True

    def __init__(
        self,
        points: Optional[Sequence[str]] = None,
        knowledge: Sequence[str] = IEP_KNOWLEDGE,
        second_pca: str = "ipca",
        iterations: int = 2,
        ipca_momentum: float = 0.9,
        mpnn_epochs: int = 5,
        mpnn_lr: float = 1e-3,
        gradient_control: str = "clip",
        clip_scope: str = "parameter",
        bb_heads: int = 8,
    ) -> None:
        super().__init__()
        knowledge = tuple(dict.fromkeys(knowledge))
        if not knowledge or set(knowledge) - set(KNOWLEDGE):
            raise UsageError(f"knowledge = {list(knowledge)!r}: expected a non-empty subset of {list(KNOWLEDGE)}")
        if second_pca not in SECOND_PCA:
            raise UsageError(f"second_pca = {second_pca!r}: expected one of {SECOND_PCA}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise UsageError(f"iterations = {iterations!r}: expected a positive integer")
        if not 0 < ipca_momentum <= 1:
            raise UsageError(f"ipca_momentum = {ipca_momentum!r}: expected 0 < momentum <= 1")
        if not (isinstance(mpnn_epochs, int) and mpnn_epochs >= 0):
            raise UsageError(f"mpnn_epochs = {mpnn_epochs!r}: expected an integer >= 0")
        if not mpnn_lr > 0:
            raise UsageError(f"mpnn_lr = {mpnn_lr!r}: expected > 0")
        if gradient_control not in GRADIENT_CONTROL:
            raise UsageError(f"gradient_control = {gradient_control!r}: expected one of {GRADIENT_CONTROL}")
        if not (isinstance(bb_heads, int) and bb_heads >= 2):
            raise UsageError(f"bb_heads = {bb_heads!r}: expected an integer >= 2 (the learned heads and the IEP one)")
        if clip_scope not in SCOPES:
            raise UsageError(f"clip_scope = {clip_scope!r}: expected one of {SCOPES}")
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
        self.bb_heads = bb_heads
        self.points = nn.ModuleList()
        self.mpnns = nn.ModuleList()
        self.graphs = nn.ModuleList()  # MHGD per pair, with "bb" only
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
                raise UsageError(
                    f"iep: the student has {len(s_points)} stages and the teacher {len(t_points)}; "
                    "expected as many, or give options.points (e.g. [stage2, stage3, stage4])"
                )
            points = t_points
        if len(points) < 2:
            raise UsageError(f"iep: sensing points {list(points)}: expected at least two")
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
        if "bb" in self.knowledge:
            self.graphs = nn.ModuleList(
                MultiHeadGraph(self.points[l].components, self.points[l + 1].components, heads=self.bb_heads)
                for l in range(len(self.layers) - 1)
            )
        self._freeze_modules()

    def _modules_fitted_on_teacher(self) -> list[nn.Module]:
        return [self.mpnns, self.graphs]

    def fit_teacher(self, batches: TeacherBatches, teacher: nn.Module) -> None:
        """Train the MPNNs (Eq. 13), and the MHGD graphs with "bb", on the
        teacher's components, folding every batch into the IPCA statistics on
        the way; then freeze them."""
        self._require_setup()
        modules = nn.ModuleList(self._modules_fitted_on_teacher())
        for p in modules.parameters():
            p.requires_grad_(True)
        modules.train()
        optimizer = torch.optim.Adam(modules.parameters(), lr=self.mpnn_lr)
        try:
            for epoch in range(self.mpnn_epochs):
                total, count = 0.0, 0
                for features in batches():
                    senses = self._teacher_senses(features, update=True)
                    terms = []
                    for l, mpnn in enumerate(self.mpnns):
                        c_prev, c_next = senses[l].components, senses[l + 1].components
                        out = mpnn(c_prev, c_next)
                        terms.append(mpnn_loss(affinity(c_next), out.affinity))
                        if len(self.graphs):
                            terms.append(self.graphs[l].loss(c_prev, c_next, alteration_summary(out.messages)))
                    loss = torch.stack(terms).sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, count = total + loss.item(), count + 1
                self.mpnn_history[epoch] = total / max(count, 1)
        finally:
            self._freeze_modules()

    @property
    def mpnn_losses(self) -> list[float]:
        """The MPNN's mean loss (Eq. 13, summed over the pairs) per epoch on the teacher."""
        return [float(v) for v in self.mpnn_history if not torch.isnan(v)]

    def _freeze_modules(self) -> None:
        for module in self._modules_fitted_on_teacher():
            for p in module.parameters():
                p.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> "EmbeddingProcedureTransfer":
        super().train(mode)
        for module in self._modules_fitted_on_teacher():
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()  # frozen: batch norm on its running statistics
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

    def teacher_knowledge(
        self, teacher: Mapping[str, Tensor], *, update: bool = False
    ) -> tuple[list[TeacherSense], list[MPNNOutput]]:
        """The teacher's SPCA per point and the MPNN's K^int / K^alt per pair."""
        self._require_setup()
        senses = self._teacher_senses(teacher, update=update)
        with torch.no_grad():
            outputs = [mpnn(senses[l].components, senses[l + 1].components) for l, mpnn in enumerate(self.mpnns)]
        return senses, outputs

    def student_knowledge(
        self, student: Mapping[str, Tensor], senses: Sequence[TeacherSense]
    ) -> tuple[list[Tensor], list[MPNNOutput]]:
        """The student's components per point (with the teacher's statistics)
        and its K^int / K^alt per pair."""
        components = [point.student(student[name], sense)
                      for name, point, sense in zip(self.layers, self.points, senses)]
        outputs = [mpnn(components[l], components[l + 1]) for l, mpnn in enumerate(self.mpnns)]
        return components, outputs

    def loss_terms(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], targets: Optional[Tensor] = None
    ) -> dict[str, Tensor]:
        """{"int": L^int, "alt": L^alt, "bb": L^BB} (the selected knowledge),
        each summed over the pairs."""
        senses, teacher_out = self.teacher_knowledge(teacher)
        components, student_out = self.student_knowledge(student, senses)
        terms = self.knowledge_losses(student_out, teacher_out, [k for k in IEP_KNOWLEDGE if k in self.knowledge])
        if "bb" in self.knowledge:
            terms["bb"] = sum(
                black_box_loss(graph.logits(components[l], components[l + 1]),
                               graph.logits(senses[l].components, senses[l + 1].components).detach())
                for l, graph in enumerate(self.graphs)
            )
        return terms

    @staticmethod
    def knowledge_losses(
        student_out: Sequence[MPNNOutput], teacher_out: Sequence[MPNNOutput], which: Sequence[str] = IEP_KNOWLEDGE
    ) -> dict[str, Tensor]:
        """L^int (Eq. 18) and L^alt (Eq. 19), as named in ``which``, each
        summed over the pairs of adjacent points."""
        losses = {"int": lambda s, t: interim_loss(s.affinity, t.affinity),
                  "alt": lambda s, t: alteration_loss(s.messages, t.messages)}
        return {k: sum(losses[k](s, t) for s, t in zip(student_out, teacher_out)) for k in which}

    @property
    def controls_gradients(self) -> bool:
        return self.gradient_control != "off"

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], targets: Optional[Tensor] = None
    ) -> Tensor:
        """The plain sum of the terms (what ``gradient_control: off`` trains on)."""
        return sum(self.loss_terms(student, teacher, targets).values())
