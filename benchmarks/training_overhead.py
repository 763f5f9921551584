"""What kdlens's training loop costs over a plain PyTorch loop on the same model and data.

Both loops train the same network from the same initial weights on the same
images, with the same optimizer, schedule, batch size and shuffling, for the
same number of epochs. The plain loop does nothing else. kdlens's
(``train_phases``) also, every epoch: measures train and test accuracy
(``evaluate`` over the whole training set and test set), writes a checkpoint
(weights, optimizer and schedule state, history) and the history file, and
checks the weights are finite; and it writes the epoch-0 checkpoint of the
initial weights. The two are run alternately, ``--runs`` times each, in one
process; the script prints the median times, their ratio, and where kdlens's
extra time goes (evaluation, checkpoint writes, the rest).

    PYTHONPATH=src .venv/bin/python benchmarks/training_overhead.py [--train 600 --test 1000 --epochs 4]

The defaults are the image demo's baseline and student: VGG-11 at width
0.125 on 32x32 synthetic shapes, 10 % of 6,000 training images (600) and the
1,000 test images, batch 64, SGD.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import kdlens.train.loop as loop
from kdlens.config import OptimConfig
from kdlens.data import SyntheticShapes
from kdlens.models import build_model
from kdlens.seeding import derive_seed, seed_everything
from kdlens.store import CheckpointStore
from kdlens.train.optim import build_optimizer


class timed:
    """Within the block, ``owner.name`` adds up the seconds spent in it (a function or a method)."""

    def __init__(self, owner, name: str) -> None:
        self.owner, self.name, self.seconds = owner, name, 0.0

    def __enter__(self) -> "timed":
        self.original = original = getattr(self.owner, self.name)

        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began

        setattr(self.owner, self.name, wrapper)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.owner, self.name, self.original)


def plain(model, train_set, optim: OptimConfig, epochs: int, seed: int) -> float:
    began = time.perf_counter()
    optimizer, scheduler = build_optimizer(optim, model.parameters())
    for epoch in range(1, epochs + 1):
        generator = seed_everything(derive_seed(seed, "plain", epoch))
        model.train()
        for images, labels, _ in DataLoader(train_set, batch_size=optim.batch_size, shuffle=True, generator=generator):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        scheduler.step()
    return time.perf_counter() - began


def kdlens(model, train_set, test_set, optim: OptimConfig, seed: int) -> tuple[float, float, float]:
    """Seconds in all, in evaluate, in checkpoint and history writes."""
    with (timed(loop, "evaluate") as evaluate, timed(CheckpointStore, "save") as save,
          timed(CheckpointStore, "write_history") as history, tempfile.TemporaryDirectory() as directory):
        phase = loop.Phase("train", optim, [model], lambda images, labels: F.cross_entropy(model(images), labels))
        began = time.perf_counter()
        loop.train_phases(model, [phase], train_set, test_set, CheckpointStore(Path(directory) / "run"),
                          seed=seed, role="kdlens", device=torch.device("cpu"), progress=False)
        total = time.perf_counter() - began
    return total, evaluate.seconds, save.seconds + history.seconds


def measure(train: int, test: int, epochs: int, runs: int, threads: int) -> dict:
    """Median seconds of the plain loop and of kdlens's, and of kdlens's evaluation and writes."""
    torch.set_num_threads(threads)
    train_set = SyntheticShapes(split="train", num_samples=train, image_size=32, num_classes=6, seed=0)
    test_set = SyntheticShapes(split="test", num_samples=test, image_size=32, num_classes=6, seed=0)
    torch.manual_seed(0)
    initial = build_model("vgg11", num_classes=6, image_size=32, width=0.125)
    optim = OptimConfig(epochs=epochs, batch_size=64, lr=0.05)
    plain(copy.deepcopy(initial), train_set, optim.model_copy(update={"epochs": 1}), 1, seed=99)  # warm-up, not timed
    plains, kdlenses, evaluations, writes = [], [], [], []
    for run in range(runs):
        plains.append(plain(copy.deepcopy(initial), train_set, optim, epochs, seed=run))
        total, evaluating, writing = kdlens(copy.deepcopy(initial), train_set, test_set, optim, seed=run)
        kdlenses.append(total)
        evaluations.append(evaluating)
        writes.append(writing)
    return {"train": train, "test": test, "epochs": epochs, "runs": runs, "threads": threads,
            "plain": statistics.median(plains), "kdlens": statistics.median(kdlenses),
            "evaluate": statistics.median(evaluations), "writes": statistics.median(writes)}


def report(m: dict) -> None:
    p, k, e, w = m["plain"], m["kdlens"], m["evaluate"], m["writes"]
    print(f"training overhead: {m['train']} training and {m['test']} test images, {m['epochs']} epochs, "
          f"{m['threads']} threads, median of {m['runs']} runs")
    print(f"plain PyTorch loop  {p:8.2f} s")
    print(f"kdlens train_phases {k:8.2f} s   ratio {k / p:.2f}")
    print(f"  of which evaluate (train and test accuracy every epoch, and of the initial weights) {e:6.2f} s "
          f"({e / k:.0%})")
    print(f"  of which checkpoint and history writes                                          {w:6.2f} s "
          f"({w / k:.0%})")
    print(f"  the rest (training, loaders, checks)                                            {k - e - w:6.2f} s; "
          f"ratio without evaluation and writes {(k - e - w) / p:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=600, help="training images (default 600)")
    parser.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    report(measure(args.train, args.test, args.epochs, args.runs, args.threads))


if __name__ == "__main__":
    main()
