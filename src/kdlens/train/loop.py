"""The one training loop: a model trained through a sequence of phases, with a
checkpoint at epoch 0 (the initialisation) and after every epoch.

A teacher or a baseline is one phase; a distilled student is two (distil the
layers up to l, then classify with the layers above it). Epochs are numbered
across phases, so a run's checkpoints form one sequence ``epoch_000.pt`` ...
The loop resumes from the last complete checkpoint and, because every epoch
re-seeds its randomness from ``(seed, role, epoch)`` and the optimizer and
schedule states are checkpointed, ends with the same weights as an
uninterrupted run.

A run that diverges stops with :class:`~kdlens.errors.TrainingDiverged`: the
loss is checked every batch before the optimizer steps, and the weights (and
buffers, such as batch-norm statistics) before every checkpoint, so no
checkpoint ever holds a diverged epoch and the last good one stays the latest.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kdlens import __version__
from kdlens.config import OptimConfig
from kdlens.errors import CheckpointError, TrainingDiverged, UsageError
from kdlens.store import CheckpointStore, load_weights
from kdlens.train.evaluate import evaluate
from kdlens.train.optim import build_optimizer
from kdlens.seeding import derive_seed, seed_everything

Objective = Callable[[Tensor, Tensor], Any]
# ``backward(objective_output, params) -> loss``: fills the parameters' .grad
# and returns the scalar to log; the default is ``output.backward()``.
Backward = Callable[[Any, list[nn.Parameter]], Tensor]


@dataclass
class Phase:
    """``objective(images, labels) -> loss`` trains ``trainable`` (modules put
    in train mode and optimised); everything else in the model stays frozen, in
    eval mode, so batch-norm statistics of frozen layers do not move either.
    With ``backward`` the objective may return anything that function turns
    into gradients (IEP's separately clipped loss terms)."""

    name: str
    optim: OptimConfig
    trainable: Sequence[nn.Module]
    objective: Objective
    description: str = ""
    trained_layers: Sequence[str] = field(default_factory=tuple)
    backward: Optional[Backward] = None


def _set_trainable(model: nn.Module, phase: Phase) -> list[nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in phase.trainable:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                p.requires_grad_(True)
                params.append(p)
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


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


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
) -> list[dict]:
    """Train (or resume) ``model`` through ``phases``; returns the history rows.

    ``extra_modules`` (e.g. a method's connector) are checkpointed with the
    model. ``on_epoch_end(epoch)`` runs after each epoch's checkpoint is on
    disk; raising from it stops training there, as a kill would. A loss, weight
    or buffer that is not finite raises :class:`TrainingDiverged` before the
    epoch's checkpoint is written.
    """
    extra_modules = extra_modules or {}
    if len(train_set) == 0:
        raise UsageError(f"the training set of {role} has no samples; expected at least one")
    model.to(device)
    for module in extra_modules.values():
        module.to(device)
    store.remove_partial_files()
    total = sum(p.optim.epochs for p in phases)

    def snapshot(epoch: int, phase: Optional[Phase], phase_epoch: int, optimizer, scheduler, history) -> None:
        state = {
            "epoch": epoch,
            "role": role,
            "phase": phase.name if phase else "init",
            "phase_epoch": phase_epoch,
            "trained_layers": list(phase.trained_layers) if phase else [],
            "model": _cpu_state(model),
            "extra": {name: _cpu_state(m) for name, m in extra_modules.items()},
            "optimizer": optimizer.state_dict() if optimizer else None,
            "scheduler": scheduler.state_dict() if scheduler else None,
            "metrics": history[-1],
            "history": history,
            "kdlens_version": __version__,
        }
        store.save(epoch, state)
        store.write_history(history)

    def measure(epoch: int, phase: Optional[Phase], objective: Optional[float], seconds: float) -> dict:
        train_metrics = evaluate(model, train_set, device)
        test_metrics = evaluate(model, test_set, device)
        return {
            "epoch": epoch,
            "phase": phase.name if phase else "init",
            "objective": objective,
            "train_accuracy": train_metrics["accuracy"],
            "train_loss": train_metrics["loss"],
            "test_accuracy": test_metrics["accuracy"],
            "test_loss": test_metrics["loss"],
            "seconds": seconds,
        }

    start = store.latest()
    if start is None:
        history = [measure(0, None, None, 0.0)]
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
            params = _set_trainable(model, phase)
            watched = _changing_tensors({"model": model, **extra_modules}, phase)
            optimizer, scheduler = build_optimizer(phase.optim, params)
            if resumed is not None and start >= first:
                optimizer.load_state_dict(resumed["optimizer"])
                scheduler.load_state_dict(resumed["scheduler"])
            for epoch in range(max(first, start + 1), last + 1):
                began = time.perf_counter()
                generator = seed_everything(derive_seed(seed, role, epoch))
                batch_size = phase.optim.batch_size
                # A last batch of one sample breaks batch norm in train mode.
                drop_last = len(train_set) % batch_size == 1
                loader = DataLoader(
                    train_set, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last
                )
                _set_modes(model, phase)
                loss_sum, batches = 0.0, 0
                inner = tqdm(loader, desc=f"{role} {phase.name} epoch {epoch}/{total}", leave=False,
                             disable=not show, dynamic_ncols=True)
                for images, labels, _ in inner:
                    images, labels = images.to(device), labels.to(device)
                    output = phase.objective(images, labels)
                    optimizer.zero_grad(set_to_none=True)
                    if phase.backward is None:
                        loss = output
                        loss.backward()
                    else:
                        loss = phase.backward(output, params)
                    value = loss.item()
                    if not math.isfinite(value):  # before the step, which would spread it to the weights
                        raise diverged(role, f"epoch {epoch} ({phase.name} phase, batch {batches + 1})",
                                       f"the objective is {value}", epoch - 1, phase.optim.lr)
                    optimizer.step()
                    loss_sum += value
                    batches += 1
                    inner.set_postfix(loss=f"{value:.4f}")
                broken = first_non_finite(watched)
                if broken is not None:  # e.g. a finite loss whose gradient overflowed
                    raise diverged(role, f"epoch {epoch} ({phase.name} phase)", f"{broken} is not finite after the "
                                   "epoch's updates", epoch - 1, phase.optim.lr)
                scheduler.step()
                row = measure(epoch, phase, loss_sum / max(batches, 1), time.perf_counter() - began)
                history.append(row)
                snapshot(epoch, phase, epoch - first + 1, optimizer, scheduler, history)
                bar.update(1)
                message = (
                    f"[{role}] epoch {epoch}/{total} {phase.name}: objective {row['objective']:.4f} "
                    f"train acc {row['train_accuracy']:.3f} test acc {row['test_accuracy']:.3f} "
                    f"({row['seconds']:.1f}s)"
                )
                if progress:
                    tqdm.write(message, file=sys.stderr)
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
    finally:
        bar.close()
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    return history
