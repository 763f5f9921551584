import json
import os

import pytest
import torch

from kdlens.store import CheckpointStore, RunDirectory, atomic_write_text


def test_checkpoints_listed_in_order_and_loaded(tmp_path):
    store = CheckpointStore(tmp_path / "teacher")
    assert store.latest() is None
    for epoch in (2, 0, 1):
        store.save(epoch, {"epoch": epoch, "w": torch.full((2,), float(epoch))})
    assert store.epochs() == [0, 1, 2]
    assert store.latest() == 2
    assert torch.equal(store.load(1)["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="epoch_007"):
        store.load(7)


def test_half_written_files_are_never_listed_and_get_cleaned(tmp_path):
    store = CheckpointStore(tmp_path / "student")
    store.save(0, {"epoch": 0})
    leftover = store.checkpoints / ".epoch_001.pt.abc.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert store.epochs() == [0]
    store.remove_partial_files()
    assert not leftover.exists()


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "history.json"
    atomic_write_text(target, "old")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_run_directory_records_config_and_refuses_another(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.initialise("seed: 1\n", seed=1)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["seed"] == 1 and meta["kdlens_version"] and meta["torch_version"] == torch.__version__
    assert run.config_path.read_text() == "seed: 1\n"
    run.initialise("seed: 1\n", seed=1)  # same config: resumes
    with pytest.raises(ValueError, match="different config"):
        run.initialise("seed: 2\n", seed=2)
