"""The one training loop: a phase of one update or of several, each with its own optimizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlens.config import OptimConfig
from kdlens.errors import UsageError
from kdlens.store import CheckpointStore
from kdlens.train.loop import Phase, Update, train_phases
from tiny_training import TinySet, two_layers

CPU = torch.device("cpu")


def test_a_phase_takes_an_objective_or_updates_not_both_nor_neither():
    model = two_layers()
    optim = OptimConfig(epochs=1)

    def objective(images, labels):
        return F.cross_entropy(model(images), labels)

    assert len(Phase("train", optim, [model], objective).updates) == 1
    with pytest.raises(UsageError, match="phase 'train'"):
        Phase("train", optim, [model])
    with pytest.raises(UsageError, match="phase 'train'"):
        Phase("train", optim, [model], objective, updates=[Update([model], objective)])


def test_each_update_steps_only_its_own_modules_with_its_own_optimizer(tmp_path):
    model = two_layers()
    seen = []

    def objective(images, labels):
        seen.append([p.requires_grad for p in model.parameters()])
        return F.cross_entropy(model(images), labels)

    phase = Phase("alternate", OptimConfig(epochs=2, batch_size=12, lr=0.1), [model],
                  updates=[Update([model[1]], objective), Update([model[3]], objective, loss_name="the second")])
    store = CheckpointStore(tmp_path / "run")
    history = train_phases(model, [phase], TinySet(), TinySet(6, seed=1), store, seed=0, role="net",
                           device=CPU, progress=False)
    assert seen[:2] == [[True, True, False, False], [False, False, True, True]]
    assert len(seen) == 2 * 2 * 2  # 2 updates x 2 batches x 2 epochs
    state = store.load(2)
    assert len(state["optimizer"]) == 2 and len(state["scheduler"]) == 2
    assert history[-1]["phase"] == "alternate" and history[-1]["objective"] > 0
    assert all(p.requires_grad for p in model.parameters())


class Stop(Exception):
    pass


def test_adam_trains_when_asked_and_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    """``optimizer: adam`` trains with Adam; its moments are checkpointed, so an
    interrupted run ends with the weights of an uninterrupted one."""
    from kdlens.train.optim import build_optimizer

    assert isinstance(build_optimizer(OptimConfig(optimizer="adam"), two_layers().parameters())[0], torch.optim.Adam)
    assert isinstance(build_optimizer(OptimConfig(), two_layers().parameters())[0], torch.optim.SGD)
    optim = OptimConfig(epochs=3, batch_size=8, optimizer="adam", lr=0.01)

    def run(directory, on_epoch_end=None):
        model = two_layers()
        phase = Phase("train", optim, [model], lambda images, labels: F.cross_entropy(model(images), labels))
        train_phases(model, [phase], TinySet(), TinySet(seed=1), CheckpointStore(tmp_path / directory), seed=0,
                     role="adam", device=CPU, progress=False, on_epoch_end=on_epoch_end)
        return model

    whole = run("whole")

    def stop_after_1(epoch):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        run("cut", stop_after_1)
    resumed = run("cut")
    start = two_layers()
    for (name, a), b, c in zip(whole.state_dict().items(), resumed.state_dict().values(), start.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(whole.state_dict().values(), start.state_dict().values()))
    state = CheckpointStore(tmp_path / "cut").load(3)
    assert "exp_avg" in str(state["optimizer"]["state"][0].keys())
