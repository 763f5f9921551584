"""Black-box knowledge K^BB of IEP knowledge transfer (Lee, Song, AAAI 2021,
sec. "Black-box Knowledge Distillation via Multi-head Graph Distillation"):
multi-head graph distillation (MHGD; Lee, Song, "Graph-based Knowledge
Distillation by Multi-head Attention Network", BMVC 2019) with the IEP
knowledge injected as one extra, fixed head, in the manner of LISA's
linguistically informed head (Strubell et al. 2018).

The paper defers the structure to its supplement; what is implemented here
follows the authors' released code (sseung0703/IEPKT, nets/Distillation.py;
MHGD in sseung0703/KD_methods_with_TF, nets/Relation.py), with the choices
marked:

Between adjacent sensing points l and l+1, on the compressed components C_l
(queries and values) and C_{l+1} (keys) of a batch of N samples, with
d = (k_l + k_{l+1}) / 2 and h learned heads (7; 8 with the IEP head):

    G_j  = BN(FC(C_{l+1}))_j · BN(FC(C_l))_jᵀ                (h x N x N logits, no scaling)
    A    = [softmax_row(G_1) ... softmax_row(G_h), K^alt-sum]  (the IEP head: Σ_i mean m^i, fixed)
    X    = ReLU(BN(FC(C_l)))                                   (N x d)
    out  = normalise(FC([A_1 X, ..., A_{h+1} X]))             (N x k_{l+1})

Trained on the teacher, jointly with the MPNN, to estimate the next point:
L = mean_v (1 - cos(out_v, c_{l+1,v})). The authors' code takes the dot
product with the unnormalised target; the cosine is our choice (the same
direction, a bounded loss). In training a random half of the heads is
dropped per row (MHGD's head drop: a head is kept where its N(0, 1) draw
exceeds the mean of the draws of all heads).

The knowledge is the learned heads' logits: the student, through the same
frozen module, learns

    L^BB = KLD(σ(tanh G^S) || σ(tanh G^T))

per head and row, averaged (the authors' code sums; their direction, student
first, is kept). The IEP head only shapes what the learned heads learn: they
pick up relations the IEP knowledge does not already carry.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.errors import UsageError


class MultiHeadGraph(nn.Module):
    """MHGD's attention network between two sensing points, with an optional
    extrinsic (IEP) head; ``heads`` counts all heads, the extrinsic one included."""

    def __init__(self, in_dim: int, out_dim: int, heads: int = 8, extrinsic: bool = True) -> None:
        super().__init__()
        learned = heads - int(extrinsic)
        if learned < 1:
            raise UsageError(f"heads = {heads!r}: expected at least {1 + int(extrinsic)}")
        width = max(1, (in_dim + out_dim) // 2)
        self.in_dim, self.out_dim, self.width = in_dim, out_dim, width
        self.learned, self.extrinsic = learned, bool(extrinsic)
        self.key = nn.Sequential(nn.Linear(out_dim, width * learned, bias=False), nn.BatchNorm1d(width * learned))
        self.query = nn.Sequential(nn.Linear(in_dim, width * learned, bias=False), nn.BatchNorm1d(width * learned))
        self.value = nn.Sequential(nn.Linear(in_dim, width, bias=False), nn.BatchNorm1d(width), nn.ReLU())
        self.readout = nn.Linear((learned + int(extrinsic)) * width, out_dim)

    def logits(self, c_prev: Tensor, c_next: Tensor) -> Tensor:
        """G: (heads, N, N) relation logits of the learned heads."""
        n = c_prev.shape[0]
        keys = self.key(c_next).view(n, self.learned, self.width).transpose(0, 1)
        queries = self.query(c_prev).view(n, self.learned, self.width).transpose(0, 1)
        return keys @ queries.mT

    def estimate(self, c_prev: Tensor, c_next: Tensor, extrinsic: Optional[Tensor] = None) -> Tensor:
        """The estimate of C_{l+1} (unit rows) through the attention graph."""
        attention = torch.softmax(self.logits(c_prev, c_next), dim=-1)
        if self.extrinsic:
            if extrinsic is None:
                raise UsageError("this graph has an extrinsic head: pass the IEP knowledge (N, N)")
            attention = torch.cat([attention, extrinsic.detach()[None]])
        if self.training:  # head drop: per row, keep the heads whose draw beats the mean draw
            draws = torch.randn(attention.shape[0], attention.shape[1], 1, device=attention.device)
            attention = attention * (draws > draws.mean(0, keepdim=True)).to(attention.dtype)
        mixed = attention @ self.value(c_prev)  # (heads, N, width)
        return F.normalize(self.readout(mixed.transpose(0, 1).flatten(1)), dim=-1)

    def loss(self, c_prev: Tensor, c_next: Tensor, extrinsic: Optional[Tensor] = None) -> Tensor:
        """Training on the teacher: mean (1 - cos(estimate, C_{l+1}))."""
        target = F.normalize(c_next.detach(), dim=-1)
        return (1 - (self.estimate(c_prev, c_next, extrinsic) * target).sum(-1)).mean()


def black_box_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """L^BB = KLD(σ(tanh G^S) || σ(tanh G^T)) per head and row, averaged over
    heads and rows; the teacher's logits are detached."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise UsageError(
            f"graph logits of shapes {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}: "
            "expected equal (heads, N, N) shapes"
        )
    log_p = F.log_softmax(torch.tanh(student_logits), dim=-1)
    log_q = F.log_softmax(torch.tanh(teacher_logits.detach()), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def alteration_summary(messages: Tensor) -> Tensor:
    """K^alt as one (N, N) matrix, Σ_i mean_E m^i_vw: the IEP head of K^BB
    (the authors' ``reduce_mean(M, 2) * num_iter``) and the K_alt of Fig. 5."""
    return messages.mean(-1).sum(-1)
