"""The message passing neural network that distils IEP knowledge, from

    Lee, Song. "Interpretable Embedding Procedure Knowledge Transfer via Stacked
    Principal Component Analysis and Graph Neural Network." AAAI 2021,
    sec. "MPNN for Distilling IEP Knowledge" (Eq. 8-15, Fig. 4) and
    "Transferring IEP Knowledge to the Student" (Eq. 18-19).

Between two adjacent sensing points l and l+1, with the compressed components
C_l (N x k_l) and C_{l+1} (N x k_{l+1}) of a batch (``spca``):

    h_v      = c_{l+1,v}                                              (nodes)
    e⁰_vw    = s · c̄_v ⊙ c̄_w,  c̄_v = LM(c_{l,v}) / ||LM(c_{l,v})||       (Eq. 8)
    mⁱ_vw    = GLU([h_v - h_w, E(eⁱ_vw)])                             (Eq. 9)
    eⁱ⁺¹_vw  = eⁱ_vw + mⁱ_vw                                          (Eq. 10)
    Ã_vw     = E(e^I_vw)                                              (Eq. 11-12)

LM is a fully connected layer and batch normalisation; E the mean of a
vector's entries; GLU(x) = (W x + b) ⊙ sigmoid(W' x + b') (Dauphin et al.
2017), its weights shared across iterations. The knowledge is
K^int = Ã_{l+1} (Eq. 14) and K^alt = the messages of all I iterations
(Eq. 15).

Defaults and choices:

- I = 2 iterations: Table 6 (2 is best on CIFAR100, 2-3 overall).
- Edge width = k_{l+1}, as the authors' code (sseung0703/IEPKT) sets it.
- s = edge width (``scale_edges``), from the authors' code; Eq. 8 as printed
  has no s. With it E(e⁰_vw) = cos(LM(c_{l,v}), LM(c_{l,w})), the affinity of
  the previous stage on the same scale as Eq. 7's A, which Ã must estimate;
  without it the readout is that cosine divided by the width.
- The GLU is the paper's plain one; the authors' code adds batch
  normalisation to both of its halves.

Use: train the module with ``mpnn_loss`` on the teacher's components (train
mode); then, with the module in eval mode (batch norm on running statistics)
and its parameters left out of the student's optimiser (the authors' code
freezes them there), run it on the teacher's and the student's components and
compare with ``interim_loss`` and ``alteration_loss``. The module is
permutation-equivariant in the batch in both modes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.errors import UsageError


class MPNNOutput(NamedTuple):
    affinity: Tensor  # (N, N): Ã_{l+1}, the knowledge K^int of Eq. 14
    messages: Tensor  # (N, N, I, E): mⁱ_vw for i = 1..I, the knowledge K^alt of Eq. 15


class EmbeddingProcedureMPNN(nn.Module):
    """Estimates the affinity at sensing point l+1 from the components at l
    and l+1 (Eq. 8-12); ``forward(c_prev, c_next)`` -> ``MPNNOutput``."""

    def __init__(
        self,
        in_dim: int,
        node_dim: int,
        edge_dim: Optional[int] = None,
        iterations: int = 2,
        scale_edges: bool = True,
    ) -> None:
        super().__init__()
        edge_dim = node_dim if edge_dim is None else edge_dim
        for name, value in (("in_dim", in_dim), ("node_dim", node_dim), ("edge_dim", edge_dim), ("iterations", iterations)):
            if not (isinstance(value, int) and value >= 1):
                raise UsageError(f"{name} = {value!r}: expected a positive integer")
        self.in_dim, self.node_dim, self.edge_dim = in_dim, node_dim, edge_dim
        self.iterations = iterations
        self.scale_edges = bool(scale_edges)
        self.edge_map = nn.Sequential(nn.Linear(in_dim, edge_dim), nn.BatchNorm1d(edge_dim))  # LM of Eq. 8
        self.message = nn.Linear(node_dim + 1, 2 * edge_dim)  # both halves of Eq. 9's GLU

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, scale_edges={self.scale_edges}"

    def initial_edges(self, c_prev: Tensor) -> Tensor:
        """Eq. 8: e⁰_vw = s · c̄_v ⊙ c̄_w, (N, in_dim) -> (N, N, E)."""
        unit = F.normalize(self.edge_map(c_prev), dim=-1)
        edges = unit[:, None, :] * unit[None, :, :]
        return edges * self.edge_dim if self.scale_edges else edges

    def forward(self, c_prev: Tensor, c_next: Tensor) -> MPNNOutput:
        for name, c, dim in (("c_prev", c_prev, self.in_dim), ("c_next", c_next, self.node_dim)):
            if c.dim() != 2 or c.shape[1] != dim:
                raise UsageError(f"{name} of shape {tuple(c.shape)}: expected (N, {dim})")
        if c_prev.shape[0] != c_next.shape[0]:
            raise UsageError(
                f"c_prev has {c_prev.shape[0]} samples and c_next {c_next.shape[0]}: expected the same batch"
            )
        edges = self.initial_edges(c_prev)
        differences = c_next[:, None, :] - c_next[None, :, :]  # h_v - h_w
        messages = []
        for _ in range(self.iterations):
            inputs = torch.cat([differences, edges.mean(-1, keepdim=True)], dim=-1)
            message = F.glu(self.message(inputs), dim=-1)  # Eq. 9
            edges = edges + message  # Eq. 10
            messages.append(message)
        return MPNNOutput(edges.mean(-1), torch.stack(messages, dim=2))  # Eq. 11-12, 14-15


def affinity_kl(target: Tensor, estimate: Tensor) -> Tensor:
    """KL(σ(target) || σ(estimate)) between (N, N) matrices, σ the softmax
    over each row: the sum over w of each row's KL, averaged over the N rows.
    The target is detached."""
    if target.shape != estimate.shape or target.dim() != 2:
        raise UsageError(
            f"affinities of shapes {tuple(target.shape)} and {tuple(estimate.shape)}: expected two (N, N) matrices"
        )
    log_p = F.log_softmax(target.detach(), dim=-1)
    log_q = F.log_softmax(estimate, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def mpnn_loss(true_affinity: Tensor, estimated_affinity: Tensor) -> Tensor:
    """Eq. 13: L^MPNN = KLD(σ(A_{l+1}) || σ(Ã_{l+1})), A_{l+1} the teacher's
    affinity at l+1 (Eq. 7)."""
    return affinity_kl(true_affinity, estimated_affinity)


def interim_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Eq. 18, L^int between the student's and the teacher's K^int.

    Printed as KLD(σ(K^S) || σ(K^T)); we take KLD(σ(K^T) || σ(K^S)), the
    authors' code's order (``kld_loss(G_T, G_S)``), the usual distillation
    direction and Eq. 13's (target first). For the printed order call
    ``affinity_kl(student, teacher)`` (whose first argument is detached)."""
    return affinity_kl(teacher, student)


def alteration_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Eq. 19: L^alt = ||K^S,alt - K^T,alt||_1 / N², the L1 norm over all
    pairs, iterations and edge channels divided by the N² pairs. The teacher's
    messages are detached."""
    if student.shape != teacher.shape or student.dim() < 2 or student.shape[0] != student.shape[1]:
        raise UsageError(
            f"messages of shapes {tuple(student.shape)} and {tuple(teacher.shape)}: expected equal (N, N, ...) shapes"
        )
    return (student - teacher.detach()).abs().sum() / student.shape[0] ** 2
