"""The one training loop: a model trained through a sequence of phases, with a
checkpoint at epoch 0 (the initialisation) and after every epoch.

A teacher or a baseline is one phase; a distilled student is two (distil the
layers up to l, then classify with the layers above it). Epochs are numbered
across phases, so a run's checkpoints form one sequence ``epoch_000.pt`` ...
The loop resumes from the last complete checkpoint and, because every epoch
re-seeds its randomness from ``(seed, role, epoch)`` and the optimizer and
schedule states are checkpointed, ends with the same weights as an
uninterrupted run.
"""

from __future__ import annotations

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
from kdlens.store import CheckpointStore
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
    disk; raising from it stops training there, as a kill would.
    """
    extra_modules = extra_modules or {}
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
            raise ValueError(
                f"{store.directory} has a checkpoint at epoch {start} but the config trains "
                f"{total} epochs; expected a run made by this config"
            )
        resumed = store.load(start, map_location=device)
        model.load_state_dict(resumed["model"])
        for name, module in extra_modules.items():
            module.load_state_dict(resumed["extra"][name])
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
                    optimizer.step()
                    loss_sum += loss.item()
                    batches += 1
                    inner.set_postfix(loss=f"{loss.item():.4f}")
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
