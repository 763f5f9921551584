"""Data-parallel training across processes (torch.distributed): what the loop
needs to know and do when it is one of several.

Each of the n processes (ranks) holds the whole model and trains on its slice
of every mini-batch: the epoch's shuffled order is the one a single process
draws (the same seeded permutation on every rank), cut into the same global
batches of ``batch_size``, and rank k takes the k-th of n equal contiguous
slices of each. After each backward pass the gradients are averaged over the
ranks (what DistributedDataParallel does, written out so that every update
of a phase, with its own trainable modules, is covered), so every rank takes
the same step and the weights stay equal on all of them. The losses are
averaged too, so a non-finite loss stops every rank at once. Only rank 0
writes checkpoints and history.

What stays identical to one process with the same global batch: the batches'
samples, the averaged gradient (the mean over the global batch: each slice's
mean loss, averaged over equal slices), hence the steps, up to the order of
float sums. What cannot: batch-norm statistics are computed per slice (the
batch-norm layers see ``batch_size / n`` samples, not ``batch_size``), dropout
draws differ per rank, and a last global batch smaller than ``batch_size`` is
dropped (a slice per rank could not be formed evenly).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from kdlens.errors import UsageError


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes); (0, 1) when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """Whether this process writes checkpoints and history (rank 0, or a single process)."""
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (nothing when not distributed)."""
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


def average_gradients(parameters: Sequence[nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks (nothing when not distributed)."""
    import torch.distributed as dist

    size = world()[1]
    if size == 1:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(size)


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over the ranks (NaN if any rank's is NaN)."""
    import torch.distributed as dist

    size = world()[1]
    if size == 1:
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # nccl reduces GPU tensors only
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total) / size


class SliceOfEachBatch(torch.utils.data.Sampler):
    """The batch sampler of one rank: the permutation ``torch.randperm(n,
    generator)`` that a shuffled DataLoader draws, cut into global batches of
    ``batch_size`` (the last dropped when smaller), and this rank's contiguous
    slice of each. Give the DataLoader the same generator: its iterator draws a
    seed from it before the permutation, as a shuffled loader's does."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator, rank: int, ranks: int) -> None:
        if batch_size % ranks:
            raise UsageError(f"batch_size = {batch_size} cannot be split over {ranks} processes; expected a "
                             f"multiple of {ranks}")
        if size < batch_size:
            raise UsageError(f"the training set has {size} samples, fewer than batch_size = {batch_size}; expected "
                             f"at least one whole batch to split over {ranks} processes")
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.rank, self.ranks = rank, ranks

    def __len__(self) -> int:
        return self.size // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=self.generator).tolist()
        share = self.batch_size // self.ranks
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start + self.rank * share : start + (self.rank + 1) * share]


def _process(rank: int, ranks: int, address: str, target, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(max(1, torch.get_num_threads() // ranks))  # the target may choose otherwise
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=ranks)
    try:
        target(*args)
    finally:
        dist.destroy_process_group()


def run_in_processes(target, ranks: int, *args) -> None:
    """``target(*args)`` in ``ranks`` local processes joined in one gloo process
    group (CPU data parallelism on one machine); raises when one of them fails."""
    import tempfile

    from kdlens.errors import KdlensError

    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise UsageError(f"nproc = {ranks!r}: expected an integer >= 1")
    with tempfile.TemporaryDirectory() as directory:
        address = f"file://{directory}/rendezvous"
        context = torch.multiprocessing.get_context("spawn")
        processes = [context.Process(target=_process, args=(rank, ranks, address, target, args))
                     for rank in range(ranks)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    failed = [(rank, p.exitcode) for rank, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        shown = ", ".join(f"rank {rank} (exit code {code})" for rank, code in failed)
        raise KdlensError(f"{shown} of {ranks} processes failed; what they wrote (checkpoints, cached "
                          "measurements) is kept: run the same command again to resume")


def join_torchrun() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment);
    False when this process was not started by torchrun with several processes."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per process: "auto" and "cuda" then mean this one
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True
