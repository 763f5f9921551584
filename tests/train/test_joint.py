"""Joint distillation (CE + a method's loss): every method runs, checkpoints, and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from kdlens.config import OptimConfig
from kdlens.data.synthetic import SyntheticShapes
from kdlens.distill.base import METHODS
from kdlens.models import build_model
from kdlens.store import CheckpointStore
from kdlens.train.joint import prepare_method, teacher_batches, train_jointly

DEVICE = torch.device("cpu")
SEED = 3
METHOD_OPTIONS = {
    "ie_ft": dict(paraphraser_epochs=1),
    "ie_at": dict(paraphraser_epochs=1),
    "ie_od": dict(paraphraser_epochs=1),
    "ft": dict(paraphraser_epochs=1),
    "od": {},
    "at": {},
    "kd": {},
    "iep": dict(mpnn_epochs=1),
}


@pytest.fixture(scope="module")
def data():
    common = dict(image_size=32, num_classes=4, seed=0, distractors=0)
    return SyntheticShapes("train", num_samples=32, **common), SyntheticShapes("test", num_samples=16, **common)


def _student(width=0.125):
    torch.manual_seed(11)
    return build_model("vgg11", num_classes=4, image_size=32, width=width)


def _teacher():
    torch.manual_seed(22)
    return build_model("vgg11", num_classes=4, image_size=32, width=0.125).eval()


def _method(name):
    return None if name is None else METHODS.build(name, **METHOD_OPTIONS[name])


def _optim(epochs):
    return OptimConfig(epochs=epochs, batch_size=16, lr=0.01)


def _train(name, store, data, epochs=1, on_epoch_end=None, student_width=0.125):
    student, method = _student(student_width), _method(name)
    teacher = _teacher() if name is not None else None
    history = train_jointly(
        student, data[0], data[1], store, _optim(epochs), seed=SEED, role="student", device=DEVICE,
        method=method, teacher=teacher, progress=False, on_epoch_end=on_epoch_end,
    )
    return student, method, teacher, history


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", ["ie_ft", "ie_at", "ie_od", "ft", "od", "at", "kd", "iep", None])
def test_one_epoch_per_method_writes_checkpoints(name, data, tmp_path):
    store = CheckpointStore(tmp_path / "student")
    teacher_before = {k: v.clone() for k, v in _teacher().state_dict().items()}
    student, method, teacher, history = _train(name, store, data)
    assert store.epochs() == [0, 1]
    assert [row["epoch"] for row in history] == [0, 1]
    assert history[0]["phase"] == "init" and history[1]["objective"] is not None
    assert torch.isfinite(torch.tensor(history[1]["objective"]))
    final = store.load(1)
    _assert_same(final["model"], {k: v.detach().cpu() for k, v in student.state_dict().items()})
    assert final["optimizer"] is not None and final["scheduler"] is not None
    if name is None:
        assert final["extra"] == {}
        return
    # the method's state (connector, encoders, paraphraser, split, margin) is checkpointed from epoch 0 on
    for epoch in (0, 1):
        saved = store.load(epoch)["extra"]["method"]
        assert saved.keys() == method.state_dict().keys()
    _assert_same(store.load(1)["extra"]["method"], {k: v.cpu() for k, v in method.state_dict().items()})
    # the teacher is never trained
    _assert_same(teacher.state_dict(), teacher_before)
    assert all(p.grad is None for p in teacher.parameters())


def test_method_checkpoint_contents(data, tmp_path):
    store = CheckpointStore(tmp_path / "ie")
    _train("ie_ft", store, data)
    saved = store.load(0)["extra"]["method"]
    assert {"permutation", "split"} <= saved.keys()
    assert any(k.startswith("paraphraser.") for k in saved)
    assert sorted(saved["permutation"].tolist()) == list(range(64))  # vgg11 at width 1/8: 64 conv channels
    assert int(saved["split"]) == 32
    od_store = CheckpointStore(tmp_path / "od")
    _train("od", od_store, data)
    margin = od_store.load(0)["extra"]["method"]["margin"]
    assert margin.shape == (64,) and (margin < 0).all()  # fitted before the epoch-0 checkpoint


def test_method_without_teacher_is_an_error(data, tmp_path):
    with pytest.raises(ValueError, match="teacher"):
        train_jointly(_student(), data[0], data[1], CheckpointStore(tmp_path / "s"), _optim(1), seed=SEED,
                      role="student", device=DEVICE, method=_method("at"), teacher=None, progress=False)


def test_student_larger_than_teacher(data, tmp_path):
    store = CheckpointStore(tmp_path / "big")
    student, method, _, _ = _train("ie_ft", store, data, student_width=0.25)
    assert store.epochs() == [0, 1]
    assert len(method.permutation) == 128 and method.inheritance_encoder[6].out_channels == 32


class Interrupt(Exception):
    pass


def _stop_after(epoch_to_stop):
    def callback(epoch):
        if epoch == epoch_to_stop:
            raise Interrupt
    return callback


@pytest.mark.parametrize("name", ["ie_ft", "ft", "od", "iep"])
def test_resume_matches_an_uninterrupted_run(name, data, tmp_path):
    # uninterrupted: 2 epochs
    whole_store = CheckpointStore(tmp_path / "whole")
    whole_student, whole_method, _, _ = _train(name, whole_store, data, epochs=2)

    # interrupted after epoch 1, then resumed with new objects, as a new process would
    store = CheckpointStore(tmp_path / "resumed")
    with pytest.raises(Interrupt):
        _train(name, store, data, epochs=2, on_epoch_end=_stop_after(1))
    assert store.epochs() == [0, 1]
    torch.manual_seed(999)  # whatever the global RNG is now must not matter
    student, method, _, history = _train(name, store, data, epochs=2)
    assert store.epochs() == [0, 1, 2]
    assert [row["epoch"] for row in history] == [0, 1, 2]

    # (b) the same final student (and method) as the uninterrupted run, bit for bit
    _assert_same(student.state_dict(), whole_student.state_dict())
    _assert_same(method.state_dict(), whole_method.state_dict())
    _assert_same(store.load(2)["model"], whole_store.load(2)["model"])

    if name == "ie_ft":
        # (a) the IE split is the first run's
        assert torch.equal(method.permutation, whole_method.permutation)
        for epoch in (0, 1, 2):
            assert torch.equal(store.load(epoch)["extra"]["method"]["permutation"], method.permutation)
    if name in ("ie_ft", "ft"):
        # (c) the frozen paraphraser is the same at every checkpoint, in both runs
        def paraphraser(state):
            return {k: v for k, v in state["extra"]["method"].items() if k.startswith("paraphraser.")}

        first = paraphraser(store.load(0))
        assert first and any(k.endswith("running_mean") for k in first)
        for epoch in (1, 2):
            _assert_same(paraphraser(store.load(epoch)), first)
            _assert_same(paraphraser(whole_store.load(epoch)), first)
        _assert_same(paraphraser(whole_store.load(0)), first)


def test_teacher_batches_reshuffle_each_pass_without_gradients(data):
    teacher = _teacher()
    batches = teacher_batches(teacher, ("conv",), data[0], DEVICE, batch_size=8, seed=1)
    first = [b["conv"] for b in batches()]
    second = [b["conv"] for b in batches()]
    assert [f.shape for f in first] == [(8, 64, 2, 2)] * 4
    assert not all(torch.equal(a, b) for a, b in zip(first, second))  # a fresh shuffle per pass
    assert torch.allclose(torch.cat(first).sum(0), torch.cat(second).sum(0), atol=1e-4)  # the same samples
    assert all(not f.requires_grad for f in first)
    # the same seed gives the same passes
    again = teacher_batches(teacher, ("conv",), data[0], DEVICE, batch_size=8, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, [b["conv"] for b in again()]))


def test_prepare_method_is_seeded_and_fits_only_fresh(data):
    teacher = _teacher()
    a, b = _method("ie_ft"), _method("ie_ft")
    prepare_method(a, _student(), teacher, data[0], DEVICE, seed=SEED, role="student", fresh=True)
    torch.manual_seed(12345)
    prepare_method(b, _student(), teacher, data[0], DEVICE, seed=SEED, role="student", fresh=False)
    assert torch.equal(a.permutation, b.permutation)
    assert len(a.paraphraser_losses) == 1 and b.paraphraser_losses == []
    # without the fit, b's paraphraser is still its seeded initialisation (a's was trained)
    assert not torch.equal(a.paraphraser.encoder[0].weight, b.paraphraser.encoder[0].weight)
    assert all(not p.requires_grad for p in b.paraphraser.parameters())
