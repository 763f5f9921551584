"""The analysis split across processes: the same answer as one process, and a
shard killed with SIGKILL loses only the batch it was computing."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdlens.config import parse_config
from kdlens.explain.analyze import AnalysisSettings, analyze_run
from kdlens.explain.shards import analyze_in_processes, parse_shard
from kdlens.errors import UsageError
from kdlens.train import train_roles

# batches of 2 samples: 3 batches of the 5 samples, at every checkpoint of every role
SETTINGS = AnalysisSettings(layer="fc1", grid=4, steps=30, warm_steps=10, noise_samples=2, batch_size=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = parse_config({
        "seed": 3, "device": "cpu",
        "data": {"image_size": 32, "num_classes": 3, "train_size": 40, "test_size": 12, "student_fraction": 0.5},
        "model": {"arch": "vgg11", "width": 0.125},
        "teacher": {"epochs": 2, "batch_size": 10},
        "baseline": {"epochs": 2, "batch_size": 10},
        "student": {"layer": "fc1", "distill": {"epochs": 2, "batch_size": 10, "lr": 0.01},
                    "classify": {"epochs": 1, "batch_size": 10}},
    })
    return train_roles(config, tmp_path_factory.mktemp("run"), progress=False)


def copy_of(run, tmp_path, name):
    """The run's checkpoints in a fresh directory, without any analysis cache."""
    target = tmp_path / name
    shutil.copytree(run.root, target, ignore=shutil.ignore_patterns("analysis"))
    return target


def entropies(analyses):
    return {role: analysis.entropy for role, analysis in analyses.items()}


def test_two_processes_give_one_process_answer(run, tmp_path):
    one = entropies(analyze_run(copy_of(run, tmp_path, "one"), SETTINGS, 5, progress=False))
    two_dir = copy_of(run, tmp_path, "two")
    two = entropies(analyze_in_processes(two_dir, SETTINGS, 5, 2, threads=1))
    assert set(one) == set(two) == {"teacher", "random", "student", "baseline"}
    for role in one:
        assert torch.equal(one[role], two[role]), role
    # each shard wrote its own batches (the baseline's: shard 1 batches 0 and 2, shard 0 batch 1)
    files = sorted(p.name for p in next((two_dir / "analysis").iterdir()).glob("baseline/epoch_001*.pt"))
    assert files == ["epoch_001.shard0.pt", "epoch_001.shard1.pt"]  # the assembly found everything cached


@pytest.mark.slow
def test_a_killed_shard_resumes_to_the_same_answer(run, tmp_path):
    one = entropies(analyze_run(copy_of(run, tmp_path, "one"), SETTINGS, 5, progress=False))
    root = copy_of(run, tmp_path, "killed")
    # shard 0 of 2 in a process of its own, killed once it has written its first batch
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from kdlens.explain.analyze import AnalysisSettings, analyze_run\n"
        "s = AnalysisSettings(layer='fc1', grid=4, steps=30, warm_steps=10, noise_samples=2, batch_size=2)\n"
        f"analyze_run({str(root)!r}, s, 5, shard=(0, 2), progress=False)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + 120
    while not list(root.glob("analysis/*/*/epoch_*.shard0.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert list(root.glob("analysis/*/*/epoch_*.shard0.pt"))  # what it had finished stays
    resumed = entropies(analyze_in_processes(root, SETTINGS, 5, 2, threads=1))
    for role in one:
        assert torch.equal(one[role], resumed[role]), role


def test_shard_names_are_checked():
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(UsageError, match="expected K/N with 0 <= K < N"):
            parse_shard(bad)
    with pytest.raises(UsageError, match="nproc = 0: expected an integer >= 1"):
        analyze_in_processes("anywhere", SETTINGS, 5, 0)


def test_the_command_line_checks_its_shard_options(run, capsys):
    from kdlens.cli import main

    assert main(["analyze", str(run.root), "--nproc", "0"]) != 0
    assert "--nproc 0: expected an integer >= 1" in capsys.readouterr().err
    assert main(["analyze", str(run.root), "--shard", "2/2"]) != 0
    assert "--shard '2/2': expected K/N with 0 <= K < N" in capsys.readouterr().err
