"""Multi-head graph distillation (MHGD), the method of

    Lee, Song. "Graph-based Knowledge Distillation by Multi-head Attention
    Network." BMVC 2019 (arXiv:1907.02226).

At every sensing point l the feature map of each of the N samples of a batch
is compressed to one vector, its first right singular vector (the channel
direction that carries most of the map, sign-corrected),

    v_l(x) = first PC of the HW x C matrix F_l(x)        (a unit vector in R^C)

(``kdlens.distill.iep.spca.first_principal_components``, differentiable).
Between two consecutive points a multi-head attention network
(``kdlens.distill.iep.black_box.MultiHeadGraph`` without the IEP head: h = 8
heads, keys from V_{l+1}, queries from V_l, each FC + batch norm) forms h
graphs over the batch, G_j = K_j Q_jᵀ (N x N), and estimates V_{l+1} by
mixing an embedding of V_l with each softmax(G_j) (the authors' "Estimator";
see black_box.py). It is trained on the teacher alone (``fit_teacher``) to
maximise the mean cos(estimate, v_{l+1}), and then frozen. The student,
through the same frozen networks, learns the teacher's graphs:

    L = weight * sum_l sum_{j, rows} KL( softmax(tanh G^S_{l,j}) || softmax(tanh G^T_{l,j}) )

summed over the pairs, the heads and the N rows, in the authors' direction
(student first): exactly the authors' ``kld_loss`` (``reduce_sum``) with
weight 1, their code having none (sseung0703/KD_methods_with_TF,
nets/Relation.py ``MHGD``; train_w_distill.py).

Gradient control: the authors clip the distillation gradient of every
student variable to the norm of its task (CE) gradient
(``tf.clip_by_norm(g_dist, ||g_task||)``, op_util.py ``Optimizer_w_MHGD``),
which is what makes a plain sum workable. ``gradient_control = "clip"`` (the
default) does the same through kdlens' trainer (``controls_gradients``, as
IEP, ``kdlens.distill.iep.gradients``; ``clip_scope = "parameter"``, one
clip per parameter tensor); ``"off"`` adds the plain weighted loss. The
authors' extra sigmoid warm-up of the clip bound (in the epoch) is not
applied.

Choices where the student is not the teacher's depth-only twin:

- Channels. The student's vector must live in the teacher's channel space
  (the graphs were fitted there): at each point where the channel counts
  differ a 1x1 convolution without bias maps the student's map to the
  teacher's channels before the decomposition, trained with the student (the
  authors' students have the teacher's widths and need none).
- Sign. The authors decompose the student's map to 4 singular vectors and
  keep, per teacher vector, the one of largest |cosine|, sign-aligned
  (``SVP.Align_rsv``). We take the student's first one only and flip it
  where its cosine with the teacher's is negative.
- Spatial sizes may differ freely: v lives in channel space.

Sensing points (``points``): by default every stage end of the two networks
(``stage1`` ... ``stageK``), resolved in ``bind`` as for FSP; the authors tap
the ends of their ResNet's stages too.

Training of the attention networks (``graph_epochs``, ``graph_lr``): the
authors train them for 40 epochs by SGD (lr 0.1, weight decay 5e-4) before
the student; we default to 5 passes of Adam at 1e-3 over the training set,
IEP's choice for its MPNN and MHGD graphs (``kdlens.distill.methods.iep``), a
fraction of the time. Batches of one sample are skipped (batch norm).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from kdlens.distill.base import METHODS, TeacherBatches, as_map
from kdlens.distill.iep.black_box import MultiHeadGraph, black_box_loss
from kdlens.distill.iep.gradients import MODES, SCOPES
from kdlens.distill.iep.spca import first_principal_components
from kdlens.distill.methods.fsp import SensingPointMethod
from kdlens.errors import UsageError

GRADIENT_CONTROL = (*MODES, "off")


def principal_vectors(feature: Tensor) -> Tensor:
    """(N, C): the sign-corrected first right singular vector of each
    sample's HW x C map (a (N, C) vector is its own, normalised)."""
    return first_principal_components(as_map(feature)).vector


def align_signs(student: Tensor, teacher: Tensor) -> Tensor:
    """The student's vectors, each flipped where its cosine with the
    teacher's is negative (the sign of a singular vector is arbitrary)."""
    dots = (student.detach() * teacher.detach()).sum(-1, keepdim=True)
    return student * torch.where(dots < 0, -1.0, 1.0).to(student.dtype)


def graph_kl_sum(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """sum over heads and rows of KL(σ(tanh G^S) || σ(tanh G^T)) (the authors'
    ``reduce_sum``); the teacher's logits are detached."""
    heads, rows = student_logits.shape[:2]
    return black_box_loss(student_logits, teacher_logits) * (heads * rows)


@METHODS.register("mhgd")
class MultiHeadGraphDistillation(SensingPointMethod):
    method_name = "mhgd"

    def __init__(
        self,
        points: Optional[Sequence[str]] = None,
        weight: float = 1.0,
        heads: int = 8,
        graph_epochs: int = 5,
        graph_lr: float = 1e-3,
        gradient_control: str = "clip",
        clip_scope: str = "parameter",
    ) -> None:
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise UsageError(f"mhgd: weight = {weight!r}: expected a finite number >= 0")
        if not (isinstance(heads, int) and not isinstance(heads, bool) and heads >= 1):
            raise UsageError(f"mhgd: heads = {heads!r}: expected a positive integer")
        if not (isinstance(graph_epochs, int) and not isinstance(graph_epochs, bool) and graph_epochs >= 0):
            raise UsageError(f"mhgd: graph_epochs = {graph_epochs!r}: expected an integer >= 0")
        if not (isinstance(graph_lr, (int, float)) and math.isfinite(graph_lr) and graph_lr > 0):
            raise UsageError(f"mhgd: graph_lr = {graph_lr!r}: expected a finite number > 0")
        if gradient_control not in GRADIENT_CONTROL:
            raise UsageError(f"mhgd: gradient_control = {gradient_control!r}: expected one of {GRADIENT_CONTROL}")
        if clip_scope not in SCOPES:
            raise UsageError(f"mhgd: clip_scope = {clip_scope!r}: expected one of {SCOPES}")
        super().__init__(points)
        self.weight = float(weight)
        self.heads = heads
        self.graph_epochs = graph_epochs
        self.graph_lr = float(graph_lr)
        self.gradient_control = gradient_control
        self.clip_scope = clip_scope
        self.connectors = nn.ModuleList()
        self.graphs = nn.ModuleList()
        # The graphs' mean loss (1 - cos, summed over the pairs) per epoch on the teacher.
        self.register_buffer("graph_history", torch.full((graph_epochs,), float("nan")))

    def extra_repr(self) -> str:
        return (f"points={list(self.layers)}, weight={self.weight}, heads={self.heads}, "
                f"gradient_control={self.gradient_control!r}")

    @property
    def controls_gradients(self) -> bool:
        return self.gradient_control != "off"

    # -- life cycle ---------------------------------------------------------

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        self._require_layers()
        channels = []
        connectors = []
        for name in self.layers:
            c_s, c_t = as_map(student[name]).shape[1], as_map(teacher[name]).shape[1]
            connectors.append(nn.Conv2d(c_s, c_t, kernel_size=1, bias=False) if c_s != c_t else nn.Identity())
            channels.append(c_t)
        self.connectors = nn.ModuleList(connectors)
        self.graphs = nn.ModuleList(
            MultiHeadGraph(channels[l], channels[l + 1], heads=self.heads, extrinsic=False)
            for l in range(len(channels) - 1)
        )
        self._freeze_graphs()

    def fit_teacher(self, batches: TeacherBatches, teacher: nn.Module) -> None:
        """Train the attention networks to estimate each next point's vectors
        from the previous one's, on the teacher alone; then freeze them."""
        self._require_setup()
        for p in self.graphs.parameters():
            p.requires_grad_(True)
        self.graphs.train()
        optimizer = torch.optim.Adam(self.graphs.parameters(), lr=self.graph_lr)
        try:
            for epoch in range(self.graph_epochs):
                total, count = 0.0, 0
                for features in batches():
                    vectors = self.teacher_vectors(features)
                    if len(vectors[0]) < 2:
                        continue
                    loss = torch.stack([graph.loss(vectors[l], vectors[l + 1])
                                        for l, graph in enumerate(self.graphs)]).sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, count = total + loss.item(), count + 1
                self.graph_history[epoch] = total / count if count else float("nan")
        finally:
            self._freeze_graphs()

    @property
    def graph_losses(self) -> list[float]:
        """The graphs' mean loss per epoch of ``fit_teacher``."""
        return [float(v) for v in self.graph_history if not torch.isnan(v)]

    def _freeze_graphs(self) -> None:
        for p in self.graphs.parameters():
            p.requires_grad_(False)
        self.graphs.eval()

    def train(self, mode: bool = True) -> "MultiHeadGraphDistillation":
        super().train(mode)
        if not any(p.requires_grad for p in self.graphs.parameters()):
            self.graphs.eval()  # frozen: batch norm on the teacher's running statistics
        return self

    def trainable_parts(self) -> list[nn.Module]:
        """The student-side connectors (none where the channel counts match)."""
        return [c for c in self.connectors if not isinstance(c, nn.Identity)]

    def _require_setup(self) -> None:
        if not self.layers or len(self.connectors) != len(self.layers):
            raise RuntimeError("mhgd is not set up; call setup() with a batch of features first")

    # -- knowledge ----------------------------------------------------------

    def teacher_vectors(self, teacher: Mapping[str, Tensor]) -> list[Tensor]:
        """The teacher's first-PC vectors per point, without gradient."""
        with torch.no_grad():
            return [principal_vectors(teacher[name].detach()) for name in self.layers]

    def student_vectors(self, student: Mapping[str, Tensor], teacher_vectors: Sequence[Tensor]) -> list[Tensor]:
        """The student's first-PC vectors per point, in the teacher's channel
        space (through the connectors), sign-aligned with the teacher's."""
        vectors = []
        for name, connector, v_t in zip(self.layers, self.connectors, teacher_vectors):
            v_s = principal_vectors(connector(as_map(student[name])))
            if v_s.shape != v_t.shape:
                raise UsageError(
                    f"mhgd: point {name!r}: student vectors {tuple(v_s.shape)} and teacher's {tuple(v_t.shape)}; "
                    "expected equal shapes (set up again?)"
                )
            vectors.append(align_signs(v_s, v_t))
        return vectors

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        self._require_setup()
        v_t = self.teacher_vectors(teacher)
        v_s = self.student_vectors(student, v_t)
        terms = []
        for l, graph in enumerate(self.graphs):
            with torch.no_grad():
                g_t = graph.logits(v_t[l], v_t[l + 1])
            terms.append(graph_kl_sum(graph.logits(v_s[l], v_s[l + 1]), g_t))
        return self.weight * torch.stack(terms).sum()
