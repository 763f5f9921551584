"""The interface of a distillation method.

A method is an ``nn.Module`` whose ``forward`` takes the student's and the
teacher's captured features (and the targets where it needs them) and returns a
scalar loss. It declares the layers it needs in ``layers`` (``"conv.pre"`` is
the pre-activation of ``conv``) and owns any trainable connector it requires.

Its life in a training run:

0. ``bind(student, teacher)`` resolves what depends on the two architectures
   (IEP's sensing points) before any feature is computed.
1. ``setup(student_features, teacher_features)`` builds the modules whose sizes
   depend on the features (connectors, encoders, a channel split). The trainer
   calls it under a fixed seed before every start *and* every resume, so the
   modules exist before a checkpoint's state is loaded into them.
2. ``fit_teacher(batches, teacher)`` is the one-off preparation from the
   trained teacher (FT's paraphraser, OD's margins). It runs only on a fresh
   start; what it learns lives in the state dict, so a resume gets it back
   from the checkpoint.
3. ``forward`` during training; only ``trainable_parts()`` are optimised with
   the student (a frozen paraphraser is not among them). A method with
   ``controls_gradients`` instead hands the trainer its ``loss_terms``, whose
   gradients the trainer rescales against the task gradient (IEP's Eq. 20-21,
   ``kdlens.distill.iep.gradients``) in ``gradient_control`` mode over
   ``clip_scope``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.errors import UsageError
from kdlens.registry import Registry

METHODS: Registry["DistillationMethod"] = Registry("distillation method")

# Re-iterable source of the teacher's features over the training set, one
# mapping {layer: feature} per batch, computed without gradients.
TeacherBatches = Callable[[], Iterable[Mapping[str, Tensor]]]


class DistillationMethod(nn.Module):
    layers: tuple[str, ...] = ()
    # True when the loss already contains the task's cross-entropy (Hinton KD's
    # (1 - alpha) CE term): a joint trainer then adds no second one.
    includes_task_loss: bool = False
    # True for methods on the network's output (logits) rather than a feature
    # layer: a comparison's feature ``layer`` does not apply to them.
    distils_logits: bool = False
    # True for methods that tap several sensing points of their own choosing
    # (IEP) rather than a comparison's one feature ``layer``.
    sensing_points: bool = False
    # True when each distillation term's gradient is to be rescaled against the
    # task gradient's norm before they are summed (see ``loss_terms``).
    controls_gradients: bool = False
    gradient_control: str = "clip"
    clip_scope: str = "parameter"
    # The registered name of the method this one is the IE-KD variant of
    # (ie_at -> "at"): its student splits the layer into inherited and explored
    # parts, and a comparison pairs the two methods ("IE-AT beats AT").
    ie_variant_of: Optional[str] = None
    # The trainer ramps the method's loss weight linearly over this many epochs
    # of training: epoch e (from 1) weighs min(1, e / k); 0 gives the full weight
    # from the first step. A config may set it per method (a comparison's
    # ``warmup_epochs``); methods whose paper warms up (DKD) set their default.
    weight_warmup_epochs: int = 0

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before each epoch's batches, ``epoch`` counted
        from 1 of the ``epochs`` it trains (on a resume too), so schedules that
        depend on the epoch alone stay resumable."""
        self.epoch, self.epochs = int(epoch), int(epochs)

    @property
    def loss_scale(self) -> float:
        """The factor of the warm-up on the method's loss at the current epoch."""
        warmup = int(self.weight_warmup_epochs)
        return 1.0 if warmup <= 0 else min(1.0, getattr(self, "epoch", warmup) / warmup)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        raise NotImplementedError

    def loss_terms(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> dict[str, Tensor]:
        """The loss as named terms whose gradients are controlled one by one;
        by default the whole loss as one term."""
        return {"distillation": self(student, teacher, targets)}

    def distillation_terms(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> tuple[float, Tensor]:
        """(the weight of the trainer's cross-entropy, the distillation loss
        without it): what a gradient balance (``kdlens.train.balance``) weighs
        against each other. A method that ``includes_task_loss`` overrides it
        (KD: 1 - alpha and the soft term)."""
        if self.includes_task_loss:
            raise UsageError(f"{type(self).__name__} holds the task loss and does not say how to split it off; "
                             "expected balance: none for it")
        return 1.0, self(student, teacher, targets)

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        """Resolve architecture-dependent choices (``layers``) from the two networks."""

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        """Build feature-size-dependent modules from one batch of features."""

    def fit_teacher(self, batches: TeacherBatches, teacher: nn.Module) -> None:
        """One-off preparation from the trained teacher (fresh starts only)."""

    def trainable_parts(self) -> list[nn.Module]:
        """The submodules optimised together with the student."""
        return [self]

    def features(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], *, same_shape: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The student's and the (detached) teacher's feature at the method's
        one layer; with ``same_shape`` a mismatch is a one-line error."""
        (layer,) = self.layers
        f_s, f_t = student[layer], teacher[layer].detach()
        if same_shape and f_s.shape != f_t.shape:
            raise UsageError(
                f"layer {layer!r}: student feature {tuple(f_s.shape)} and teacher feature "
                f"{tuple(f_t.shape)} differ; expected equal shapes"
            )
        return f_s, f_t


def paired_features(method: "DistillationMethod", student: Mapping[str, Tensor],
                    teacher: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The method's student and (detached) teacher features, of any shapes but
    of the same samples: a one-line error when the batch sizes differ (methods
    that compare samples with each other: SP, PKT, CC)."""
    (layer,) = method.layers
    f_s, f_t = method.features(student, teacher, same_shape=False)
    if f_s.shape[0] != f_t.shape[0]:
        raise UsageError(
            f"layer {layer!r}: batches of {f_s.shape[0]} student and {f_t.shape[0]} teacher samples; expected the same"
        )
    return f_s, f_t


def connected_maps(name: str, method: "DistillationMethod", connector: Optional[nn.Module],
                   student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The student's feature through the method's ``connector`` (built in
    ``setup``) and the teacher's, both as maps pooled to their common size
    (FitNet's regressor, AB's and OD's connectors)."""
    f_s, f_t = method.features(student, teacher, same_shape=False)
    if connector is None:
        raise RuntimeError(f"{name} is not set up; call setup() with a batch of features first")
    return match_spatial(connector(as_map(f_s)), as_map(f_t))


def pooled_maps(method: str, layer: str, f_s: Tensor, f_t: Tensor, why: str) -> tuple[Tensor, Tensor]:
    """The student's and the teacher's (B, C, H, W) maps pooled to their common
    size (:func:`match_spatial`), or a one-line error naming ``method``, the
    shapes and ``why`` one position is not enough."""
    if f_s.dim() != 4 or f_t.dim() != 4:
        raise UsageError(
            f"layer {layer!r}: student feature {tuple(f_s.shape)} and teacher feature "
            f"{tuple(f_t.shape)}; {method} expected (B, C, H, W) feature maps"
        )
    f_s, f_t = match_spatial(f_s, f_t)
    if f_s.shape[2] * f_s.shape[3] < 2:
        raise UsageError(
            f"layer {layer!r}: feature maps of {f_s.shape[2]}x{f_s.shape[3]}; {method} expected more than one "
            f"position ({why})"
        )
    return f_s, f_t


def as_map(feature: Tensor) -> Tensor:
    """A (B, C) feature as a (B, C, 1, 1) map, so conv connectors serve fc layers too."""
    if feature.dim() == 2:
        return feature[:, :, None, None]
    if feature.dim() != 4:
        raise UsageError(f"feature of shape {tuple(feature.shape)}: expected (B, C, H, W) or (B, C)")
    return feature


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Two (B, C, H, W) maps pooled to their common (min H, min W) size by
    adaptive average pooling of the larger one, as RepDistiller does for AT."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    if tuple(a.shape[2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b
