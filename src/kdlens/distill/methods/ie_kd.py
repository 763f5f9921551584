"""Inheritance and exploration knowledge distillation (IE-KD), the framework of

    Huang, Shen, Xing, Liu, Tian, Li, Deng, Huang, Hua. "Revisiting Knowledge
    Distillation: An Inheritance and Exploration Framework." CVPR 2021.

The teacher's feature f_T is compressed by a frozen paraphraser (sec. 3.1,
``kdlens.distill.factors``) into the factor F_T. The student's feature f_S is
split along channels, by a random permutation drawn once at set-up and kept
in the state dict (so a resumed run has the same split), into an inheritance
part (a share ``eta`` of the channels, 0.5 by default: Table 5's best) and an
exploration part. Each part has its own factor encoder into F_T's space:
F_inh = E_inh(f_inh), F_exp = E_exp(f_exp). Then (Eq. 2-4)

    L_inh = d(F_inh, F_T),   L_exp = -d(F_exp, F_T)
    L     = L_goal + lambda_inh * L_inh + lambda_exp * L_exp

with d the L1 distance of per-sample L2-normalised factors by default and the
other metrics of Table 6(a) by name (``kdlens.distill.similarity``: l1, l2,
cos, partial_l2, l1_cka). lambda_inh = lambda_exp = 50 is the paper's CIFAR-10
setting (sec. 4.2), also Table 6(b)'s best; factor ratio 2 is sec. 4.2's. This
module returns the two weighted terms; the trainer adds L_goal.

Variants (sec. 4.2):

- ``ie_ft``: d on the factors themselves (Eq. 2-3 as written).
- ``ie_at``: the factors are first reduced to spatial attention maps
  (channel mean of squares, AT), then d.
- ``ie_od``: the OD form, L_inh = ||max(F_inh, 0) - max(F_T, 0)||_2 and its
  negative for L_exp (the paper's "F_S" in the teacher's slot is read as
  F_T). We normalise the rectified factors per sample like the others: an
  unnormalised negative distance is unbounded below and is minimised by
  inflating F_exp instead of changing what it encodes.

Exploration starts late (ours, not the paper's): the negative distance of
L_exp pushes the exploration part away from the teacher's factor from the
first step, before the network has learnt anything of its own to explore
with (an IE-DML run once collapsed to chance). ``exploration_start`` (0.25) is the share of the training
epochs during which L_exp is off: a student with 10 epochs explores from its
4th on. 0 is the paper's schedule.

The teacher's factor is computed without gradients, so nothing flows into the
teacher or its paraphraser. Works for any student/teacher channel counts, the
student larger than the teacher included; spatial sizes that differ are
pooled to the smaller.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from kdlens.distill.base import METHODS, as_map, match_spatial
from kdlens.distill.factors import FactorEncoder
from kdlens.distill.methods.attention import attention_map
from kdlens.distill.methods.factor_transfer import FactorMethod
from kdlens.distill.similarity import inheritance_exploration
from kdlens.errors import UsageError

VARIANTS = {"ie_ft": "l1", "ie_at": "l1", "ie_od": "l2"}


def reduce_factor(factor: Tensor, variant: str) -> Tensor:
    """What the distance compares for a variant: the factor, its attention
    map (IE-AT) or its positive part (IE-OD)."""
    if variant == "ie_at":
        return attention_map(factor)
    if variant == "ie_od":
        return factor.clamp_min(0)
    return factor


class InheritanceExploration(FactorMethod):
    variant = "ie_ft"

    def __init__(
        self,
        layer: str = "conv",
        eta: float = 0.5,
        lambda_inh: float = 50.0,
        lambda_exp: float = 50.0,
        metric: Optional[str] = None,
        factor_ratio: float = 2.0,
        paraphraser_epochs: int = 30,
        paraphraser_lr: float = 0.1,
        exploration_start: float = 0.25,
    ) -> None:
        super().__init__(layer, factor_ratio, paraphraser_epochs, paraphraser_lr)
        if not 0 <= exploration_start < 1:
            raise UsageError(f"exploration_start = {exploration_start!r}: expected the share of the training "
                             "epochs before the exploration term starts, 0 <= exploration_start < 1")
        self.exploration_start = float(exploration_start)
        if not 0 <= eta <= 1:
            raise UsageError(f"eta = {eta!r}: expected the inheritance share of channels, 0 <= eta <= 1")
        for name, value in (("lambda_inh", lambda_inh), ("lambda_exp", lambda_exp)):
            if not value >= 0:
                raise UsageError(f"{name} = {value!r}: expected >= 0")
        self.metric = metric or VARIANTS[self.variant]
        self.inherit, self.explore = inheritance_exploration(self.metric)
        self.eta = float(eta)
        self.lambda_inh = float(lambda_inh)
        self.lambda_exp = float(lambda_exp)
        self.inheritance_encoder: Optional[FactorEncoder] = None
        self.exploration_encoder: Optional[FactorEncoder] = None
        self.last_terms: dict[str, float] = {}

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        (layer,) = self.layers
        if self.variant == "ie_at":
            for who, feature in (("student", student[layer]), ("teacher", teacher[layer])):
                if feature.dim() != 4 or feature.shape[2] * feature.shape[3] < 2:
                    raise UsageError(
                        f"ie_at at layer {layer!r}: {who} feature {tuple(feature.shape)}; expected (B, C, H, W) "
                        "feature maps larger than 1x1 (an attention map of one position is constant)"
                    )
        factors = self._build_paraphraser(teacher[layer])
        channels = as_map(student[layer]).shape[1]
        if channels < 2 and 0 < self.eta < 1:
            raise UsageError(f"layer {layer!r} has {channels} channel(s); the split needs at least 2")
        # A permutation rather than sorted index sets: the first share is the
        # inheritance part. Persistent, so the checkpoint carries the split.
        # With 0 < eta < 1 both parts keep at least one channel.
        share = int(self.eta * channels + 0.5)
        if 0 < self.eta < 1:
            share = min(max(share, 1), channels - 1)
        self.register_buffer("permutation", torch.randperm(channels))
        self.register_buffer("split", torch.tensor(share))
        inherit, explore = self.parts()
        self.inheritance_encoder = FactorEncoder(len(inherit), factors) if len(inherit) else None
        self.exploration_encoder = FactorEncoder(len(explore), factors) if len(explore) else None

    def parts(self) -> tuple[Tensor, Tensor]:
        """Channel indices of the inheritance and the exploration part."""
        if not hasattr(self, "permutation"):
            raise RuntimeError(f"{self.variant} is not set up; call setup() with a batch of features first")
        k = int(self.split)
        return self.permutation[:k], self.permutation[k:]

    def terms(self, f_s: Tensor, factor_t: Tensor) -> dict[str, Tensor]:
        """The unweighted L_inh and L_exp (present only for non-empty parts)."""
        f_s = as_map(f_s)
        target = reduce_factor(factor_t, self.variant)
        inherit, explore = self.parts()
        out: dict[str, Tensor] = {}
        if self.inheritance_encoder is not None:
            f_inh, _ = match_spatial(self.inheritance_encoder(f_s[:, inherit]), factor_t)
            out["inh"] = self.inherit(reduce_factor(f_inh, self.variant), target)
        if self.exploration_encoder is not None:
            f_exp, _ = match_spatial(self.exploration_encoder(f_s[:, explore]), factor_t)
            out["exp"] = self.explore(reduce_factor(f_exp, self.variant), target)
        return out

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        f_s, f_t = self.features(student, teacher, same_shape=False)
        with torch.no_grad():
            factor_t = self.teacher_factor(f_t)
        factor_t, _ = match_spatial(factor_t, as_map(f_s))
        terms = self.terms(f_s, factor_t)
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        loss = f_s.new_zeros(())
        if "inh" in terms:
            loss = loss + self.lambda_inh * terms["inh"]
        if "exp" in terms and self.exploring:
            loss = loss + self.lambda_exp * terms["exp"]
        return loss

    @property
    def exploring(self) -> bool:
        """Whether the exploration term is on: from the first epoch after the
        ``exploration_start`` share of the training epochs (always, before the
        trainer has said which epoch it is)."""
        if not hasattr(self, "epochs"):
            return True
        return (self.epoch - 1) >= self.exploration_start * self.epochs


@METHODS.register("ie_ft")
class IEFactorTransfer(InheritanceExploration):
    variant = "ie_ft"
    ie_variant_of = "ft"


@METHODS.register("ie_at")
class IEAttentionTransfer(InheritanceExploration):
    variant = "ie_at"
    ie_variant_of = "at"


@METHODS.register("ie_od")
class IEOverhaul(InheritanceExploration):
    variant = "ie_od"
    ie_variant_of = "od"
