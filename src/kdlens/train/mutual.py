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

A loss that is not finite stops the run with
:class:`~kdlens.errors.TrainingDiverged` before that network's step, and
weights that are not finite stop it before the epoch's checkpoint, so the last
good checkpoint stays the latest (as in ``kdlens.train.loop``).

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
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kdlens import __version__
from kdlens.config import OptimConfig
from kdlens.distill.base import as_map
from kdlens.distill.methods.ie_kd import IEFactorTransfer
from kdlens.errors import TrainingDiverged, UsageError
from kdlens.models import NamedLayerModel
from kdlens.seeding import derive_seed, seed_everything
from kdlens.store import CheckpointStore, load_weights
from kdlens.train.evaluate import evaluate
from kdlens.train.loop import diverged, first_non_finite
from kdlens.train.optim import build_optimizer

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
                                      metric=o.metric, factor_ratio=o.factor_ratio)
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


def _parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen, params = set(), []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


class NonFiniteLoss(TrainingDiverged):
    """L_k of a mutual step is not finite; ``network`` is 1 or 2, no step was taken for it."""

    def __init__(self, network: int, value: float) -> None:
        super().__init__(f"the loss L_{network} of net{network} is {value}, expected finite")
        self.network, self.value = network, value


def mutual_step(pair: MutualPair, optimizers, images: Tensor, labels: Tensor) -> list[float]:
    """Steps (a)-(d) on one mini-batch; returns L_1 and L_2. A loss that is not
    finite raises :class:`NonFiniteLoss` before its network's step."""
    values = []
    for k in (0, 1):
        loss, _ = pair.loss(k, images, labels)  # (a) / (c): fresh predictions of both
        optimizers[k].zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(k + 1, value)
        optimizers[k].step()                   # (b) / (d)
        values.append(value)
    return values


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
) -> list[dict]:
    """Train (or resume) both networks; a checkpoint per epoch holds the pair,
    both optimizers and schedules. Returns the history rows."""
    seed_everything(derive_seed(seed, role, "setup"))
    pair.setup(torch.stack([train_set[i].image for i in range(min(2, len(train_set)))]))
    pair.to(device)
    store.remove_partial_files()
    built = [build_optimizer(optim, _parameters(pair.side(k))) for k in (0, 1)]
    optimizers, schedulers = [b[0] for b in built], [b[1] for b in built]

    def measure(epoch: int, objectives: Optional[list[float]], seconds: float) -> dict:
        row: dict = {"epoch": epoch, "seconds": seconds}
        for k in (0, 1):
            metrics = evaluate(pair.nets[k], test_set, device)
            row[f"net{k + 1}_objective"] = objectives[k] if objectives else None
            row[f"net{k + 1}_test_accuracy"] = metrics["accuracy"]
            row[f"net{k + 1}_test_loss"] = metrics["loss"]
        return row

    def snapshot(epoch: int, history: list[dict]) -> None:
        store.save(epoch, {
            "epoch": epoch, "role": role, "mode": pair.mode,
            "pair": {k: v.detach().cpu().clone() for k, v in pair.state_dict().items()},
            "optimizers": [o.state_dict() for o in optimizers],
            "schedulers": [s.state_dict() for s in schedulers],
            "metrics": history[-1], "history": history, "kdlens_version": __version__,
        })
        store.write_history(history)

    start = store.latest()
    if start is None:
        history, start = [measure(0, None, 0.0)], 0
        snapshot(0, history)
    else:
        if start > optim.epochs:
            raise UsageError(f"{store.directory} has a checkpoint at epoch {start} but the config trains "
                             f"{optim.epochs} epochs; expected a run made by this config")
        state = store.load(start, map_location=device, required=("pair", "optimizers", "schedulers", "history"))
        load_weights(pair, state["pair"], source=f"checkpoint {str(store.path(start))!r}", model_name="the mutual pair")
        for k in (0, 1):
            optimizers[k].load_state_dict(state["optimizers"][k])
            schedulers[k].load_state_dict(state["schedulers"][k])
        history = list(state["history"])

    show = progress and sys.stderr.isatty()
    watched = [(f"pair.{name}", t) for name, t in (*pair.named_parameters(), *pair.named_buffers())
               if t.is_floating_point()]
    for epoch in range(start + 1, optim.epochs + 1):
        began = time.perf_counter()
        generator = seed_everything(derive_seed(seed, role, epoch))
        loader = DataLoader(train_set, batch_size=optim.batch_size, shuffle=True, generator=generator,
                            drop_last=len(train_set) % optim.batch_size == 1)
        sums = [0.0, 0.0]
        batches = 0
        for images, labels, _ in tqdm(loader, desc=f"{role} epoch {epoch}/{optim.epochs}", leave=False,
                                      disable=not show, dynamic_ncols=True):
            try:
                values = mutual_step(pair, optimizers, images.to(device), labels.to(device))
            except NonFiniteLoss as error:
                raise diverged(role, f"epoch {epoch} ({pair.mode}, batch {batches + 1})",
                               f"the loss L_{error.network} of net{error.network} is {error.value}", epoch - 1,
                               optim.lr) from None
            sums = [s + v for s, v in zip(sums, values)]
            batches += 1
        broken = first_non_finite(watched)
        if broken is not None:
            raise diverged(role, f"epoch {epoch} ({pair.mode})", f"{broken} is not finite after the epoch's updates",
                           epoch - 1, optim.lr)
        for scheduler in schedulers:
            scheduler.step()
        pair.eval()
        row = measure(epoch, [s / max(batches, 1) for s in sums], time.perf_counter() - began)
        history.append(row)
        snapshot(epoch, history)
        if progress:
            tqdm.write(f"[{role}] epoch {epoch}/{optim.epochs}: test acc net1 {row['net1_test_accuracy']:.3f} "
                       f"net2 {row['net2_test_accuracy']:.3f} ({row['seconds']:.1f}s)", file=sys.stderr)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    pair.eval()
    return history
