"""Data-parallel training over processes (gloo on the CPU).

What is guaranteed, and tested here: with the same global batch, n processes
take the steps one process takes (the same samples in every global batch, the
gradient averaged over equal slices), so a network without batch norm or
dropout ends with the weights of a single-process run, up to the order of
float sums; every rank holds the same weights, and only rank 0 writes. What is
not: batch-norm statistics per slice, dropout draws per rank, and a last
partial global batch (dropped) differ from one process.
"""

import json

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from kdlens.cli import main
from kdlens.config import OptimConfig
from kdlens.data import Sample
from kdlens.errors import UsageError
from kdlens.store import CheckpointStore, RunDirectory, load_checkpoint_file
from kdlens.train.distributed import SliceOfEachBatch, run_in_processes, world
from kdlens.train.loop import Phase, train_phases


class Points(Dataset):
    """48 samples of 6 features, 3 classes, a fixed seed."""

    def __init__(self, seed=0, size=48):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, 6, generator=generator)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return Sample(self.x[index], int(self.y[index]), torch.zeros(1, dtype=torch.bool))


def train(directory):
    """Three epochs of an MLP (no batch norm, no dropout) with SGD and momentum, batch 8."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    optim = OptimConfig(epochs=3, batch_size=8, lr=0.1)
    phase = Phase("train", optim, [model], lambda x, y: nn.functional.cross_entropy(model(x), y))
    train_phases(model, [phase], Points(), Points(seed=1, size=16), CheckpointStore(directory), seed=5, role="mlp",
                 device=torch.device("cpu"), progress=False)
    rank, ranks = world()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{directory}-rank{rank}of{ranks}.pt")


def test_two_processes_take_the_steps_of_one(tmp_path):
    train(str(tmp_path / "one"))
    run_in_processes(train, 2, str(tmp_path / "two"))
    one = torch.load(tmp_path / "one-rank0of1.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"two-rank{r}of2.pt", weights_only=True) for r in (0, 1)]
    for name, value in one.items():
        assert torch.equal(ranks[0][name], ranks[1][name])  # every rank holds the same weights
        assert torch.allclose(ranks[0][name], value, atol=1e-6), name  # and those of one process
    # rank 0 wrote the checkpoints, with the same history as one process up to float rounding
    single = load_checkpoint_file(CheckpointStore(tmp_path / "one").path(3))["history"]
    double = load_checkpoint_file(CheckpointStore(tmp_path / "two").path(3))["history"]
    for a, b in zip(single[1:], double[1:]):
        assert a["objective"] == pytest.approx(b["objective"], abs=1e-6)
        assert a["test_accuracy"] == b["test_accuracy"]


def test_each_rank_takes_its_slice_of_the_single_process_batches():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    slices = [list(SliceOfEachBatch(10, 4, torch.Generator().manual_seed(3), rank, 2)) for rank in (0, 1)]
    assert slices[0] == [order[0:2], order[4:6]] and slices[1] == [order[2:4], order[6:8]]  # the last 2 dropped
    with pytest.raises(UsageError, match="batch_size = 5 cannot be split over 2 processes"):
        SliceOfEachBatch(10, 5, torch.Generator(), 0, 2)
    with pytest.raises(UsageError, match="the training set has 3 samples, fewer than batch_size = 4"):
        SliceOfEachBatch(3, 4, torch.Generator(), 0, 2)


def test_kdlens_train_runs_on_two_processes(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "device: cpu\n"
        "data: {image_size: 32, num_classes: 3, train_size: 32, test_size: 8, student_fraction: 0.5}\n"
        "model: {arch: vgg11, width: 0.125}\n"
        "teacher: {epochs: 1, batch_size: 8}\nbaseline: {epochs: 1, batch_size: 8}\n"
        "student: {layer: fc1, distill: {epochs: 1, batch_size: 8, lr: 0.01}, classify: {epochs: 1, batch_size: 8}}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--nproc", "2", "--quiet"]) == 0
    for role, last in (("teacher", 1), ("baseline", 1), ("student", 2)):
        assert load_checkpoint_file(RunDirectory(out).role(role).path(last))["epoch"] == last


def test_kdlens_compare_on_two_processes_trains_what_one_process_trains(tmp_path):
    """What stays identical: every rank takes its slice of the single-process batches
    and the averaged gradient, so the students' test errors equal a one-process run
    (their weights up to float rounding, as the MLP test above checks); the teacher,
    the paraphrasers and the report are the same code on rank 0."""
    raw = {"seeds": [0], "device": "cpu",
           "data": {"image_size": 32, "num_classes": 3, "train_size": 32, "test_size": 16},
           "model": {"arch": "vgg11", "width": 0.125}, "teacher": {"epochs": 1, "batch_size": 8},
           "student": {"epochs": 1, "batch_size": 8}, "methods": ["baseline", "kd"],
           "analysis": {"enabled": False}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        assert main(["compare", "--config", str(config), "--out", str(out), "--nproc", str(nproc), "--quiet"]) == 0
        results[nproc] = json.loads((out / "results.json").read_text())
        assert (out / "table.md").is_file()
    for method, seeds in results[1]["students"].items():
        for key in ("test_error", "train_error"):
            assert seeds["0"][key] == pytest.approx(results[2]["students"][method]["0"][key], abs=1e-6), (method, key)
    assert results[1]["teacher"]["test_error"] == pytest.approx(results[2]["teacher"]["test_error"], abs=1e-6)
