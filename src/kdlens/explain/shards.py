"""The analysis of a run split across processes and machines.

The work of :func:`~kdlens.explain.analyze.analyze_run` is a set of units: a
batch of samples at the checkpoints of a role (one batch's checkpoints stay
together, because each warm-starts from the one before). Shard k of n takes
batches k, k + n, ... and writes their records into the run's analysis cache,
in files of its own (``epoch_XXX.shard<k>.pt``), after every batch. When every
shard is done, an unsharded :func:`analyze_run` assembles the analysis from
the cache and computes nothing: the answer is the one a single process gives
with the same thread count, since every batch is cut, seeded and warm-started
as that process would. A killed shard loses only the batch it was computing;
run again, it skips what is cached.

Three ways to run the shards:

* :func:`analyze_in_processes` (``kdlens analyze RUN --nproc N``): N local
  processes, each with its share of the CPU threads;
* under ``torchrun`` (``torchrun --nproc-per-node N [--nnodes M ...] -m
  kdlens analyze RUN``): each process is the shard of its global rank
  (``RANK`` of ``WORLD_SIZE``); they meet at a ``torch.distributed`` barrier
  (gloo), then rank 0 assembles and reports;
* by hand on any machines sharing the run directory: ``kdlens analyze RUN
  --shard K/N`` for each K, then ``kdlens analyze RUN`` once.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Optional

import torch

from kdlens.errors import UsageError
from kdlens.explain.analyze import AnalysisSettings, RoleAnalysis, analyze_run
from kdlens.store import RunDirectory
from kdlens.train.distributed import run_in_processes, world


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N, or a one-line :class:`UsageError`."""
    parts = text.split("/")
    if len(parts) == 2 and all(part.strip().isdigit() for part in parts):
        rank, count = int(parts[0]), int(parts[1])
        if 0 <= rank < count:
            return rank, count
    raise UsageError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/2")


def torchrun_shard() -> Optional[tuple[int, int]]:
    """(rank, world size) when this process was started by torchrun with more than one process, else None."""
    count = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), count) if count > 1 else None


def _one_gpu_each(local_rank: int) -> None:
    """With GPUs, local process k works on GPU k mod count: a config's "auto" and
    "cuda" mean that one."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())


def _run_shard(root: str, settings: AnalysisSettings, sample_count: int, threads: int,
               options: dict[str, Any]) -> None:
    """One local process's shard: its rank of the process group ``run_in_processes`` made."""
    torch.set_num_threads(threads)
    _one_gpu_each(world()[0])
    analyze_run(root, settings, sample_count, shard=world(), progress=False, **options)


def analyze_in_processes(run: RunDirectory | str, settings: AnalysisSettings, sample_count: int, nproc: int, *,
                         threads: Optional[int] = None, **options: Any) -> dict[str, RoleAnalysis]:
    """Run the n shards in ``nproc`` local processes (``threads`` intra-op threads
    each; default: this process's threads shared out), then assemble in this
    process. ``options``: :func:`analyze_run`'s split, max_epochs, final_only.
    A shard that fails raises once all have stopped; what they computed is cached."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UsageError(f"nproc = {nproc!r}: expected an integer >= 1")
    root = str(RunDirectory(run).root if not isinstance(run, RunDirectory) else run.root)
    if nproc > 1:
        threads = threads or max(1, torch.get_num_threads() // nproc)
        run_in_processes(_run_shard, nproc, root, settings, sample_count, threads, options)
    return analyze_run(root, settings, sample_count, **options)


def analyze_under_torchrun(run: RunDirectory | str, settings: AnalysisSettings, sample_count: int,
                           shard: tuple[int, int], **options: Any) -> Optional[dict[str, RoleAnalysis]]:
    """This process's shard, a barrier with the others (torch.distributed, gloo),
    then the assembled analysis on rank 0 and None on the other ranks."""
    import torch.distributed as dist

    _one_gpu_each(int(os.environ.get("LOCAL_RANK", "0")))
    analyze_run(run, settings, sample_count, shard=shard, progress=False, **options)
    started = not dist.is_initialized()
    if started:  # shards may finish hours apart: the barrier waits as long as a day
        dist.init_process_group("gloo", timeout=timedelta(days=1))
    try:
        dist.barrier()
        return analyze_run(run, settings, sample_count, **options) if shard[0] == 0 else None
    finally:
        if started:
            dist.destroy_process_group()
