"""The one training loop: a model trained through a sequence of phases, with a
checkpoint at epoch 0 (the initialisation) and after every epoch.

A teacher or a baseline is one phase; a distilled student is two (distil the
layers up to l, then classify with the layers above it). Epochs are numbered
across phases, so a run's checkpoints form one sequence ``epoch_000.pt`` ...
The loop resumes from the last complete checkpoint and, because every epoch
re-seeds its randomness from ``(seed, role, epoch)`` and the optimizer and
schedule states are checkpointed, ends with the same weights as an
uninterrupted run.

A phase runs one or more *updates* on every mini-batch, in turn: each trains
its own modules on its own objective with its own optimizer. An ordinary phase
is one update; deep mutual learning (``kdlens.train.mutual``) is one phase of
two, one per network. An :class:`EpochReport` measures the row each epoch adds
to the history and sums it up in the progress line; by default
(:class:`ModelReport`) the model's objective, accuracy and loss on the
training and test sets.

A run that diverges stops with :class:`~kdlens.errors.TrainingDiverged`: each
update's loss is checked before its optimizer steps, and the weights (and
buffers, such as batch-norm statistics) before every checkpoint, so no
checkpoint ever holds a diverged epoch and the last good one stays the latest.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kdlens import __version__
from kdlens.config import OptimConfig
from kdlens.errors import CheckpointError, TrainingDiverged, UsageError
from kdlens.store import CheckpointStore, load_weights
from kdlens.train.distributed import (
    SliceOfEachBatch, average_gradients, barrier, is_writer, mean_over_ranks, world,
)
from kdlens.train.evaluate import evaluate
from kdlens.train.optim import build_optimizer
from kdlens.seeding import derive_seed, seed_everything

Objective = Callable[[Tensor, Tensor], Any]
# ``backward(objective_output, params) -> loss``: fills the parameters' .grad
# and returns the scalar to log; the default is ``output.backward()``.
Backward = Callable[[Any, list[nn.Parameter]], Tensor]


@dataclass
class Update:
    """One optimizer step on a mini-batch: ``objective(images, labels) -> loss``
    trains the parameters of ``trainable``, and only those require gradients
    meanwhile. ``loss_name`` names the loss when it is not finite."""

    trainable: Sequence[nn.Module]
    objective: Objective
    backward: Optional[Backward] = None
    loss_name: str = "the objective"


@dataclass
class Phase:
    """``objective(images, labels) -> loss`` trains ``trainable`` (modules put
    in train mode and optimised); everything else in the model stays frozen, in
    eval mode, so batch-norm statistics of frozen layers do not move either.
    With ``backward`` the objective may return anything that function turns
    into gradients (IEP's separately clipped loss terms).

    Instead of ``objective``, ``updates`` may give several updates that take
    turns on every mini-batch, each with its own optimizer (mutual learning);
    ``trainable`` is then everything they change."""

    name: str
    optim: OptimConfig
    trainable: Sequence[nn.Module]
    objective: Optional[Objective] = None
    description: str = ""
    trained_layers: Sequence[str] = field(default_factory=tuple)
    backward: Optional[Backward] = None
    updates: Sequence[Update] = field(default_factory=tuple)
    # ``on_epoch_start(phase_epoch, phase_epochs)`` before each epoch's batches (1-based, on a resume
    # too): schedules that depend on the epoch alone (a loss weight's warm-up) stay resumable
    on_epoch_start: Optional[Callable[[int, int], None]] = None

    def __post_init__(self) -> None:
        if (self.objective is None) == (not self.updates):
            raise UsageError(f"phase {self.name!r}: expected either an objective or updates")
        if self.objective is not None:
            self.updates = (Update(self.trainable, self.objective, self.backward),)


class EpochReport(Protocol):
    """How a run measures an epoch's history row and sums it up for the progress line."""

    def measure(self, epoch: int, phase: Optional[Phase], objectives: Optional[list[float]],
                seconds: float) -> dict:
        """The row of ``epoch`` (0 and ``phase`` None: the initialisation); ``objectives``
        are the mean losses of the phase's updates over the epoch's batches."""

    def summary(self, row: dict) -> str:
        """A few of the row's numbers, for one line of progress."""


@dataclass
class ModelReport:
    """The row of a model: the phase's objective (summed over its updates) and
    the accuracy and loss on the training and test sets."""

    model: nn.Module
    train_set: Dataset
    test_set: Dataset
    device: torch.device

    def measure(self, epoch: int, phase: Optional[Phase], objectives: Optional[list[float]],
                seconds: float) -> dict:
        train_metrics = evaluate(self.model, self.train_set, self.device)
        test_metrics = evaluate(self.model, self.test_set, self.device)
        return {
            "epoch": epoch,
            "phase": phase.name if phase else "init",
            "objective": None if objectives is None else sum(objectives),
            "train_accuracy": train_metrics["accuracy"],
            "train_loss": train_metrics["loss"],
            "test_accuracy": test_metrics["accuracy"],
            "test_loss": test_metrics["loss"],
            "seconds": seconds,
        }

    def summary(self, row: dict) -> str:
        return (f"objective {row['objective']:.4f} train acc {row['train_accuracy']:.3f} "
                f"test acc {row['test_accuracy']:.3f}")


class NonFiniteLoss(TrainingDiverged):
    """An update's loss is not finite; its optimizer has not stepped."""

    def __init__(self, loss_name: str, value: float) -> None:
        self.problem = f"{loss_name} is {value}"
        super().__init__(f"{self.problem}, expected finite")


def unique_parameters(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``modules``, each once, in order."""
    seen: set[int] = set()
    params: list[nn.Parameter] = []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def _set_trainable(model: nn.Module, trainable: Sequence[nn.Module]) -> list[nn.Parameter]:
    """Only the parameters of ``trainable`` require gradients; returns them."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = unique_parameters(trainable)
    for p in params:
        p.requires_grad_(True)
    return params


def _set_modes(model: nn.Module, phase: Phase) -> None:
    model.eval()
    for module in phase.trainable:
        module.train()


def first_non_finite(named: Sequence[tuple[str, Tensor]]) -> Optional[str]:
    """The name of the first tensor of ``named`` that holds a NaN or an infinity, or None."""
    for name, tensor in named:
        if not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _changing_tensors(modules: dict[str, nn.Module], phase: Phase) -> list[tuple[str, Tensor]]:
    """What ``phase`` changes, by name: the parameters and buffers (batch-norm
    statistics) of its trainable modules that ``modules`` hold."""
    changing = {id(t) for module in phase.trainable for t in (*module.parameters(), *module.buffers())}
    named, seen = [], set()
    for prefix, module in modules.items():
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            if id(tensor) in changing and id(tensor) not in seen and tensor.is_floating_point():
                seen.add(id(tensor))
                named.append((f"{prefix}.{name}", tensor))
    return named


def diverged(role: str, where: str, problem: str, last_good: int, lr: float) -> TrainingDiverged:
    """The one-line error of a run that stops because it diverged."""
    return TrainingDiverged(
        f"{role} diverged in {where}: {problem}, expected finite; training stopped and epoch {last_good} stays "
        f"the latest checkpoint (lr = {lr:g}; a smaller lr usually helps)"
    )


def run_updates(model: nn.Module, updates: Sequence[Update], optimizers: Sequence[torch.optim.Optimizer],
                images: Tensor, labels: Tensor) -> list[float]:
    """One mini-batch: each update in turn computes its loss, back-propagates it
    into its own parameters and steps its optimizer; returns the losses. A loss
    that is not finite raises :class:`NonFiniteLoss` before its step."""
    values = []
    for update, optimizer in zip(updates, optimizers):
        params = _set_trainable(model, update.trainable)
        output = update.objective(images, labels)
        optimizer.zero_grad(set_to_none=True)
        if update.backward is None:
            loss = output
            loss.backward()
        else:
            loss = update.backward(output, params)
        value = mean_over_ranks(loss.item())  # the same on every rank, so all stop together
        if not math.isfinite(value):  # before the step, which would spread it to the weights
            raise NonFiniteLoss(update.loss_name, value)
        average_gradients(params)  # data-parallel: every rank takes the same step
        optimizer.step()
        values.append(value)
    return values


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _save_states(items: Sequence[Any]) -> Any:
    """A checkpoint's optimizer (scheduler) entry: the state of a phase's one
    update, or a list of one per update."""
    states = [item.state_dict() for item in items]
    return states[0] if len(states) == 1 else states


def _load_states(items: Sequence[Any], saved: Any) -> None:
    """Restore what :func:`_save_states` saved."""
    for item, state in zip(items, [saved] if len(items) == 1 else saved):
        item.load_state_dict(state)


def train_phases(
    model: nn.Module,
    phases: Sequence[Phase],
    train_set: Dataset,
    test_set: Dataset,
    store: CheckpointStore,
    *,
    seed: int,
    role: str,
    device: torch.device,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[int], None]] = None,
    extra_modules: Optional[dict[str, nn.Module]] = None,
    report: Optional[EpochReport] = None,
    notes: Optional[Mapping[str, Any]] = None,
    augment: Optional[Callable[[Tensor], Tensor]] = None,
) -> list[dict]:
    """Train (or resume) ``model`` through ``phases``; returns the history rows.

    ``extra_modules`` (e.g. a method's connector) are checkpointed with the
    model. ``on_epoch_end(epoch)`` runs after each epoch's checkpoint is on
    disk; raising from it stops training there, as a kill would. A loss, weight
    or buffer that is not finite raises :class:`TrainingDiverged` before the
    epoch's checkpoint is written. ``report`` measures the history rows
    (default: :class:`ModelReport`); ``notes`` (plain values, e.g. the mutual
    mode) are written into every checkpoint under their own keys.
    ``augment(images) -> images`` (``kdlens.data.augment``) changes each training
    batch on the device before the updates see it, drawing from torch's global
    generator (re-seeded every epoch, so a resumed run draws the same); the
    evaluation of the report sees the images as they are.
    """
    extra_modules = extra_modules or {}
    report = report or ModelReport(model, train_set, test_set, device)
    if len(train_set) == 0:
        raise UsageError(f"the training set of {role} has no samples; expected at least one")
    model.to(device)
    for module in extra_modules.values():
        module.to(device)
    writer = is_writer()  # one process of several writes the checkpoints (train.distributed)
    if writer:
        store.remove_partial_files()
    total = sum(p.optim.epochs for p in phases)

    def snapshot(epoch: int, phase: Optional[Phase], phase_epoch: int, optimizers, schedulers, history) -> None:
        state = {
            **(notes or {}),
            "epoch": epoch,
            "role": role,
            "phase": phase.name if phase else "init",
            "phase_epoch": phase_epoch,
            "trained_layers": list(phase.trained_layers) if phase else [],
            "model": _cpu_state(model),
            "extra": {name: _cpu_state(m) for name, m in extra_modules.items()},
            "optimizer": _save_states(optimizers) if optimizers else None,
            "scheduler": _save_states(schedulers) if schedulers else None,
            "metrics": history[-1],
            "history": history,
            "kdlens_version": __version__,
        }
        if writer:
            store.save(epoch, state)
            store.write_history(history)

    start = store.latest()
    barrier()  # every rank has read where to start before rank 0 writes anything
    if start is None:
        history = [report.measure(0, None, None, 0.0)]
        snapshot(0, None, 0, None, None, history)
        start, resumed = 0, None
    else:
        if start > total:
            raise UsageError(
                f"{store.directory} has a checkpoint at epoch {start} but the config trains "
                f"{total} epochs; expected a run made by this config"
            )
        resumed = store.load(start, map_location=device,
                             required=("model", "extra", "optimizer", "scheduler", "history"))
        source = f"checkpoint {str(store.path(start))!r}"
        load_weights(model, resumed["model"], source=source, model_name=f"the {role} model")
        for name, module in extra_modules.items():
            if name not in resumed["extra"]:
                raise CheckpointError(f"{source} has no state for {name!r}; expected a checkpoint of this config")
            load_weights(module, resumed["extra"][name], source=source, model_name=f"the {role}'s {name}")
        history = list(resumed["history"])

    show = progress and sys.stderr.isatty()
    bar = tqdm(total=total, initial=start, desc=role, unit="epoch", disable=not show, dynamic_ncols=True)
    offset = 0
    try:
        for phase in phases:
            first, last = offset + 1, offset + phase.optim.epochs
            offset = last
            if last <= start:
                continue
            built = [build_optimizer(phase.optim, _set_trainable(model, u.trainable)) for u in phase.updates]
            optimizers, schedulers = [b[0] for b in built], [b[1] for b in built]
            watched = _changing_tensors({"model": model, **extra_modules}, phase)
            if resumed is not None and start >= first:
                _load_states(optimizers, resumed["optimizer"])
                _load_states(schedulers, resumed["scheduler"])
            for epoch in range(max(first, start + 1), last + 1):
                began = time.perf_counter()
                generator = seed_everything(derive_seed(seed, role, epoch))
                if phase.on_epoch_start is not None:
                    phase.on_epoch_start(epoch - first + 1, phase.optim.epochs)
                batch_size = phase.optim.batch_size
                # A last batch of one sample breaks batch norm in train mode.
                drop_last = len(train_set) % batch_size == 1
                rank, ranks = world()
                if ranks == 1:
                    loader = DataLoader(
                        train_set, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last
                    )
                else:
                    # the loader's generator too: its iterator draws a seed from it before the
                    # permutation, as a shuffled loader does
                    loader = DataLoader(train_set, generator=generator, batch_sampler=SliceOfEachBatch(
                        len(train_set), batch_size, generator, rank, ranks))
                _set_modes(model, phase)
                sums, batches = [0.0] * len(phase.updates), 0
                inner = tqdm(loader, desc=f"{role} {phase.name} epoch {epoch}/{total}", leave=False,
                             disable=not show, dynamic_ncols=True)
                for images, labels, _ in inner:
                    images, labels = images.to(device), labels.to(device)
                    if augment is not None:  # before every update, so a teacher and its student see the same
                        images = augment(images)
                    try:
                        values = run_updates(model, phase.updates, optimizers, images, labels)
                    except NonFiniteLoss as error:
                        raise diverged(role, f"epoch {epoch} ({phase.name} phase, batch {batches + 1})",
                                       error.problem, epoch - 1, phase.optim.lr) from None
                    sums = [s + v for s, v in zip(sums, values)]
                    batches += 1
                    inner.set_postfix(loss=" ".join(f"{v:.4f}" for v in values))
                broken = first_non_finite(watched)
                if broken is not None:  # e.g. a finite loss whose gradient overflowed
                    raise diverged(role, f"epoch {epoch} ({phase.name} phase)", f"{broken} is not finite after the "
                                   "epoch's updates", epoch - 1, phase.optim.lr)
                for scheduler in schedulers:
                    scheduler.step()
                row = report.measure(epoch, phase, [s / max(batches, 1) for s in sums], time.perf_counter() - began)
                history.append(row)
                snapshot(epoch, phase, epoch - first + 1, optimizers, schedulers, history)
                bar.update(1)
                if progress:
                    tqdm.write(f"[{role}] epoch {epoch}/{total} {phase.name}: {report.summary(row)} "
                               f"({row['seconds']:.1f}s)", file=sys.stderr)
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
    finally:
        bar.close()
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    barrier()  # the checkpoints are on disk for every rank that reads them next
    return history
