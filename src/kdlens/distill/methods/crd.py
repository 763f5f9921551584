"""Contrastive representation distillation (CRD), after

    Tian, Krishnan, Isola. "Contrastive Representation Distillation."
    ICLR 2020.

The student's and the teacher's features at the method's layer (flattened)
are embedded by linear maps to ``feat_dim`` = 128 dimensions and L2-normalised,
s = g_S(f_S) / ||.||, t = g_T(f_T) / ||.||; both embeddings train with the
student. The critic is h(s, t) = exp(s . t / tau), tau = ``nce_t`` = 0.07.
Contrasting both ways, as the paper (and RepDistiller's ``CRDLoss``) does,
with the InfoNCE (softmax) loss over one positive and K = ``nce_k`` negatives:

    L_S = -mean_i log( h(s_i, t_i) / (h(s_i, t_i) + sum_k h(s_i, Q^T_k)) )   (student anchor)
    L_T = -mean_i log( h(t_i, s_i) / (h(t_i, s_i) + sum_k h(t_i, Q^S_k)) )   (teacher anchor)
    L   = beta * (L_S + L_T)

Defaults: feat_dim = 128, nce_t = 0.07 and beta = 0.8 are the paper's and
RepDistiller's (``--feat_dim``, ``--nce_t``, ``-b 0.8``); nce_k = 4096
negatives (RepDistiller: 16384). The teacher's feature is detached.

Deviations from the paper, precisely:

1. Negatives come from FIFO queues, not an index-keyed memory bank. The
   paper keeps one memory slot per training sample (its momentum-averaged
   embedding, ``nce_m`` = 0.5), draws K random *other* indices per sample
   and uses the sample's own slot as the positive. kdlens hands methods no
   sample indices, so here, MoCo-style (He et al., CVPR 2020), Q^T and Q^S
   hold the teacher's and the student's last K embeddings (of earlier
   batches, detached, newest replacing oldest); they start as random unit
   vectors. A queue may still hold an earlier view of the same image (a
   false negative, rare once the training set exceeds K). The queues and
   their write position are buffers, checkpointed with the method; they
   advance only in training mode.
2. The positive is the other network's *current* embedding of the same
   sample, detached, instead of its memory slot; so, as in the paper, each
   term's gradient flows through its anchor only (L_S trains the student and
   g_S, L_T trains g_T).
3. The loss is InfoNCE (a (K+1)-way softmax cross-entropy), not the paper's
   NCE estimator (binary logistic terms with the noise constant
   K / n_data and the normalisation Z fixed at the first batch; eq. 18 as
   RepDistiller's ``ContrastLoss`` cites it).
   Both are lower bounds on the mutual information that contrast a positive
   against K negatives; InfoNCE needs no data-set size or Z. Its value starts
   near 2 log(K + 1) (16.6 for K = 4096) rather than the NCE's.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod
from kdlens.errors import UsageError


def info_nce(anchor: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """mean_i -log softmax([a_i . p_i, a_i . n_1, ..., a_i . n_K] / tau)[0]
    for (B, D) anchors and positives and (K, D) negatives."""
    logits = torch.cat([(anchor * positive).sum(1, keepdim=True), anchor @ negatives.mT], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


class Embed(nn.Module):
    """A linear map of the flattened feature, L2-normalised (RepDistiller's ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, feature: Tensor) -> Tensor:
        return F.normalize(self.linear(feature.flatten(1)), dim=1)


@METHODS.register("crd")
class ContrastiveRepresentationDistillation(DistillationMethod):
    def __init__(
        self, layer: str = "conv", beta: float = 0.8, feat_dim: int = 128, nce_k: int = 4096, nce_t: float = 0.07,
    ) -> None:
        super().__init__()
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise UsageError(f"crd: beta = {beta!r}: expected a finite number >= 0")
        if not (isinstance(feat_dim, int) and not isinstance(feat_dim, bool) and feat_dim >= 1):
            raise UsageError(f"crd: feat_dim = {feat_dim!r}: expected a positive integer")
        if not (isinstance(nce_k, int) and not isinstance(nce_k, bool) and nce_k >= 1):
            raise UsageError(f"crd: nce_k = {nce_k!r}: expected a positive integer (the number of negatives)")
        if not (isinstance(nce_t, (int, float)) and math.isfinite(nce_t) and nce_t > 0):
            raise UsageError(f"crd: nce_t = {nce_t!r}: expected a finite temperature > 0")
        self.layers = (layer,)
        self.beta = float(beta)
        self.feat_dim = feat_dim
        self.nce_k = nce_k
        self.nce_t = float(nce_t)
        self.embed_s: Optional[Embed] = None
        self.embed_t: Optional[Embed] = None

    def extra_repr(self) -> str:
        return (f"layer={self.layers[0]!r}, beta={self.beta}, feat_dim={self.feat_dim}, nce_k={self.nce_k}, "
                f"nce_t={self.nce_t}")

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        (layer,) = self.layers
        self.embed_s = Embed(student[layer][0].numel(), self.feat_dim)
        self.embed_t = Embed(teacher[layer][0].numel(), self.feat_dim)
        # random unit vectors until real embeddings push them out (as MoCo)
        self.register_buffer("queue_s", F.normalize(torch.randn(self.nce_k, self.feat_dim), dim=1))
        self.register_buffer("queue_t", F.normalize(torch.randn(self.nce_k, self.feat_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def embeddings(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(s, t): the unit embeddings of the student's and the (detached) teacher's feature."""
        if self.embed_s is None or self.embed_t is None:
            raise RuntimeError("crd is not set up; call setup() with a batch of features first")
        f_s, f_t = self.features(student, teacher, same_shape=False)
        if f_s.shape[0] != f_t.shape[0]:
            raise UsageError(
                f"crd: student batch of {f_s.shape[0]} and teacher batch of {f_t.shape[0]}: expected equal sizes"
            )
        return self.embed_s(f_s), self.embed_t(f_t)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        s, t = self.embeddings(student, teacher)
        # clones: the queues are written below, before the backward pass reads them
        negatives_t, negatives_s = self.queue_t.clone(), self.queue_s.clone()
        loss_s = info_nce(s, t.detach(), negatives_t, self.nce_t)
        loss_t = info_nce(t, s.detach(), negatives_s, self.nce_t)
        if self.training:
            self._enqueue(s.detach(), t.detach())
        return self.beta * (loss_s + loss_t)

    @torch.no_grad()
    def _enqueue(self, s: Tensor, t: Tensor) -> None:
        """Write the batch over the oldest entries (FIFO); a batch larger than
        the queue keeps its last ``nce_k`` rows."""
        s, t = s[-self.nce_k:], t[-self.nce_k:]
        slots = (self.queue_ptr + torch.arange(len(s), device=s.device)) % self.nce_k
        self.queue_s[slots] = s.to(self.queue_s.dtype)
        self.queue_t[slots] = t.to(self.queue_t.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(s)) % self.nce_k)
