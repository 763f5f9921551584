"""Mutual learning of two networks trained from scratch together: deep mutual
learning (DML) and its inheritance-and-exploration form (IE-DML).

- DML (Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018):
  L_1 = CE(z_1, y) + KL(p_2 || p_1), L_2 = CE(z_2, y) + KL(p_1 || p_2).
- IE-DML (IE-KD paper, sec. 3.3, Eq. 5-6): each network is the other's teacher
  through an IE-KD process, and each has its own auto-encoder, trained with it:
  L_k = CE_k + lambda_rec L_rec,k + lambda_inh L_inh,k + lambda_exp L_exp,k,
  lambda_rec = 0.8, lambda_inh = lambda_exp = 50 (sec. 4.5).

The update alternates in the paper's four steps per mini-batch: (a) compute the
predictions of both networks, (b) update network 1 on L_1, (c) recompute the
predictions, (d) update network 2 on L_2. Network k's side is the network, its
own auto-encoder (which makes the factors the *other* network inherits from)
and the encoders of its inheritance and exploration parts.

The four steps are one phase of two updates (one per side) of the one
training loop, ``kdlens.train.loop``, which seeds, checkpoints and resumes a
pair as any other model. A loss that is not finite stops the run with
:class:`~kdlens.errors.TrainingDiverged` before that network's step, and
weights that are not finite stop it before the epoch's checkpoint, so the last
good checkpoint stays the latest.

Choices of ours, where the paper is silent: while one side is updated the
other side's predictions are computed as DML computes them, in train mode
(batch statistics, dropout), but without gradients and with its batch-norm
running statistics restored afterwards, so step (b) changes nothing of network
2's, and vice versa. (Eval-mode predictions of a network that is itself still
training lean on stale running statistics; with them DML lost 10-15 points
to independent training here.) The peer's auto-encoder, which only encodes
the peer's feature for this step, runs in eval mode. The reconstruction loss
trains only the auto-encoder (the feature is detached), so it does not push
the backbone towards easily reconstructed features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdlens.config import OptimConfig
from kdlens.distill.base import as_map
from kdlens.distill.methods.ie_kd import IEFactorTransfer
from kdlens.errors import UsageError
from kdlens.models import NamedLayerModel
from kdlens.seeding import derive_seed, seed_everything
from kdlens.store import CheckpointStore
from kdlens.train.evaluate import evaluate
from kdlens.train.loop import Phase, Update, run_updates, train_phases

MUTUAL_MODES = ("dml", "ie_dml")


@dataclass
class MutualOptions:
    layer: str = "conv"
    lambda_rec: float = 0.8
    lambda_inh: float = 50.0
    lambda_exp: float = 50.0
    eta: float = 0.5
    metric: str = "l1"
    factor_ratio: float = 2.0
    exploration_start: float = 0.25


class MutualPair(nn.Module):
    """Two networks and, for IE-DML, the two IE-KD processes between them:
    ``learn[0]`` teaches network 1 from network 2 (its paraphraser is network
    2's auto-encoder) and ``learn[1]`` the other way round."""

    def __init__(self, net1: NamedLayerModel, net2: NamedLayerModel, mode: str,
                 options: MutualOptions = MutualOptions()) -> None:
        super().__init__()
        if mode not in MUTUAL_MODES:
            raise UsageError(f"mutual mode = {mode!r}: expected one of {', '.join(MUTUAL_MODES)}")
        if not (math.isfinite(options.lambda_rec) and options.lambda_rec >= 0):
            raise UsageError(f"lambda_rec = {options.lambda_rec!r}: expected a finite number >= 0")
        self.nets = nn.ModuleList([net1, net2])
        self.mode = mode
        self.options = options
        self.learn = nn.ModuleList()

    def setup(self, probe: Tensor) -> None:
        if self.mode != "ie_dml":
            return
        o = self.options
        with torch.no_grad():
            features = [net.eval().features(probe, [o.layer]) for net in self.nets]
        for k in (0, 1):
            method = IEFactorTransfer(layer=o.layer, eta=o.eta, lambda_inh=o.lambda_inh, lambda_exp=o.lambda_exp,
                                      metric=o.metric, factor_ratio=o.factor_ratio,
                                      exploration_start=o.exploration_start)
            method.setup(features[k], features[1 - k])
            method.paraphraser.requires_grad_(True)  # trained jointly here, never frozen
            self.learn.append(method)

    def side(self, k: int) -> list[nn.Module]:
        """Everything network k's update changes."""
        modules: list[nn.Module] = [self.nets[k]]
        if self.mode == "ie_dml":
            modules += [*self.learn[k].trainable_parts(), self.learn[1 - k].paraphraser]
        return modules

    def _set_modes(self, k: int) -> None:
        self.eval()
        for module in self.side(k):
            module.train()

    def loss(self, k: int, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """L_k with the other side fixed (no gradients, its state left as it was)."""
        layers = [self.options.layer] if self.mode == "ie_dml" else []
        self._set_modes(k)
        peer = self.nets[1 - k]
        saved = {name: buffer.clone() for name, buffer in peer.named_buffers()}
        peer.train()
        try:
            with torch.no_grad():
                peer_logits, peer_features = peer.forward_with_features(images, layers)
        finally:
            for name, buffer in peer.named_buffers():
                buffer.copy_(saved[name])
            peer.eval()
        logits, features = self.nets[k].forward_with_features(images, layers)
        task = F.cross_entropy(logits, labels)
        terms = {"ce": float(task.detach())}
        if self.mode == "dml":
            mimic = F.kl_div(F.log_softmax(logits, 1), F.softmax(peer_logits, 1), reduction="batchmean")
            terms["kl"] = float(mimic.detach())
            return task + mimic, terms
        layer = self.options.layer
        reconstruction = self.learn[1 - k].paraphraser.reconstruction_loss(as_map(features[layer].detach()))
        transfer = self.learn[k](features, peer_features)
        terms.update(rec=float(reconstruction.detach()), **self.learn[k].last_terms)
        return task + self.options.lambda_rec * reconstruction + transfer, terms


def _updates(pair: MutualPair) -> list[Update]:
    """Steps (a)-(b) and (c)-(d): each computes fresh predictions of both networks
    and updates one side on its loss."""
    def update(k: int) -> Update:
        def objective(images: Tensor, labels: Tensor) -> Tensor:
            return pair.loss(k, images, labels)[0]

        return Update(pair.side(k), objective, loss_name=f"the loss L_{k + 1} of net{k + 1}")

    return [update(0), update(1)]


def mutual_phase(pair: MutualPair, optim: OptimConfig) -> Phase:
    """The whole of mutual training as one phase of the loop, named after the mode."""
    def start_epoch(epoch: int, epochs: int) -> None:  # IE-DML's exploration starts late
        for method in pair.learn:
            method.start_epoch(epoch, epochs)

    return Phase(pair.mode, optim, [pair], updates=_updates(pair), on_epoch_start=start_epoch)


def mutual_step(pair: MutualPair, optimizers: Sequence[torch.optim.Optimizer], images: Tensor,
                labels: Tensor) -> list[float]:
    """Steps (a)-(d) on one mini-batch, as the loop runs them; returns L_1 and L_2.
    A loss that is not finite raises :class:`~kdlens.train.loop.NonFiniteLoss`
    before its network's step."""
    return run_updates(pair, _updates(pair), optimizers, images, labels)


@dataclass
class PairReport:
    """A mutual run's history row: each network's mean L_k over the epoch and its
    accuracy and loss on the test set."""

    pair: MutualPair
    test_set: Dataset
    device: torch.device

    def measure(self, epoch: int, phase: Optional[Phase], objectives: Optional[list[float]],
                seconds: float) -> dict:
        row: dict = {"epoch": epoch, "seconds": seconds}
        for k in (0, 1):
            metrics = evaluate(self.pair.nets[k], self.test_set, self.device)
            row[f"net{k + 1}_objective"] = objectives[k] if objectives else None
            row[f"net{k + 1}_test_accuracy"] = metrics["accuracy"]
            row[f"net{k + 1}_test_loss"] = metrics["loss"]
        return row

    def summary(self, row: dict) -> str:
        return f"test acc net1 {row['net1_test_accuracy']:.3f} net2 {row['net2_test_accuracy']:.3f}"


def train_mutually(
    pair: MutualPair,
    train_set: Dataset,
    test_set: Dataset,
    store: CheckpointStore,
    optim: OptimConfig,
    *,
    seed: int,
    role: str,
    device: torch.device,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[int], None]] = None,
    augment: Optional[Callable[[Tensor], Tensor]] = None,
) -> list[dict]:
    """Train (or resume) both networks; a checkpoint per epoch holds the pair
    (as its model), the mode, both optimizers and schedules. Returns the history rows.
    ``augment`` changes each training batch, for both networks alike."""
    seed_everything(derive_seed(seed, role, "setup"))
    pair.setup(torch.stack([train_set[i].image for i in range(min(2, len(train_set)))]))
    return train_phases(pair, [mutual_phase(pair, optim)], train_set, test_set, store, seed=seed, role=role,
                        device=device, progress=progress, on_epoch_end=on_epoch_end, augment=augment,
                        report=PairReport(pair, test_set, device), notes={"mode": pair.mode})
