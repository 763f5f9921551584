"""The paper's training protocols: teacher, baseline and feature-distilled student."""

import pytest
import torch

from kdlens.config import parse_config
from kdlens.store import RunDirectory
from kdlens.builders import build_datasets, build_network, student_split
from kdlens.train import load_teacher, train_from_scratch, train_roles, train_student

from conftest import tiny_raw


class Interrupt(Exception):
    pass


def stop_after(epoch_to_stop: int):
    def callback(epoch: int) -> None:
        if epoch == epoch_to_stop:
            raise Interrupt
    return callback


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One complete run of all three roles, shared by the read-only tests."""
    config = parse_config(tiny_raw())
    run = train_roles(config, tmp_path_factory.mktemp("run"), progress=False)
    return config, run


def test_every_epoch_is_checkpointed_from_the_initialisation(trained):
    config, run = trained
    assert run.role("teacher").epochs() == [0, 1, 2]
    assert run.role("baseline").epochs() == [0, 1, 2]
    assert run.role("student").epochs() == [0, 1, 2, 3, 4]
    state = run.role("student").load(3)
    assert state["phase"] == "classify" and state["phase_epoch"] == 1
    assert state["optimizer"] is not None and state["scheduler"] is not None
    for key in ("train_accuracy", "train_loss", "test_accuracy", "test_loss", "objective"):
        assert key in state["metrics"]
    assert [row["epoch"] for row in state["history"]] == [0, 1, 2, 3]
    assert (run.root / "config.yaml").is_file() and (run.root / "meta.json").is_file()
    assert (run.root / "student" / "history.json").is_file()


def test_student_and_baseline_start_from_the_same_weights(trained):
    _, run = trained
    assert_same_weights(run.role("student").load(0)["model"], run.role("baseline").load(0)["model"])


def test_student_and_baseline_share_the_fraction():
    config = parse_config(tiny_raw())
    full, _ = build_datasets(config)
    subset = student_split(config, full)
    assert len(subset) == round(0.5 * len(full))
    assert subset.indices == student_split(config, full).indices


def test_distillation_lowers_the_distillation_loss_and_leaves_the_teacher_unchanged(tmp_path):
    raw = tiny_raw()
    raw["student"]["distill"].update(epochs=4, lr=0.01)
    config = parse_config(raw)
    # An untrained teacher whose fc1 carries a clear signal: a 2-epoch teacher
    # of this tiny config still has a near-zero fc1, which would prove nothing.
    teacher = build_network(config.model, config, 4, init="teacher").eval()
    torch.nn.init.normal_(teacher.stages.fc1[-2].weight, 0.0, 0.1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    run = RunDirectory(tmp_path)
    train_student(config, run, teacher=teacher, progress=False)
    assert_same_weights(teacher.state_dict(), before)
    assert all(p.grad is None for p in teacher.parameters())

    full, _ = build_datasets(config)
    images = torch.stack([full[i].image for i in student_split(config, full).indices])
    student = build_network(config.model, config, 4, init="student").eval()

    def distillation_loss(epoch: int) -> float:
        student.load_state_dict(run.role("student").load(epoch)["model"])
        with torch.no_grad():
            return (student.forward_to(images, "fc1") - teacher.forward_to(images, "fc1")).pow(2).sum(1).mean().item()

    initial, distilled = distillation_loss(0), distillation_loss(4)
    assert distilled < 0.6 * initial, (initial, distilled)
    objectives = [row["objective"] for row in run.role("student").load(4)["history"][1:]]
    assert objectives[-1] < 0.6 * objectives[0], objectives


def test_distill_phase_touches_only_layers_up_to_l_and_classify_phase_only_above(trained):
    _, run = trained
    store = run.role("student")
    init, distilled, final = (store.load(e)["model"] for e in (0, 2, 4))
    below = ("stages.conv.", "stages.fc1.")
    for key in init:
        if key.startswith(below):
            # parameters and batch-norm buffers of the frozen layers stay exactly put
            assert torch.equal(distilled[key], final[key]), key
        else:
            assert torch.equal(init[key], distilled[key]), key
    assert any(not torch.equal(init[k], distilled[k]) for k in init if k.startswith(below))
    assert any(not torch.equal(distilled[k], final[k]) for k in init if not k.startswith(below))
    assert store.load(2)["trained_layers"] == ["conv", "fc1"]
    assert store.load(4)["trained_layers"] == ["fc2", "fc3"]


def test_distilling_from_the_output_has_no_second_phase(tmp_path, trained):
    config, run = trained
    raw = tiny_raw()
    raw["student"]["layer"] = "fc3"
    output_config = parse_config(raw)
    teacher = load_teacher(config, run, num_classes=4)
    train_student(output_config, RunDirectory(tmp_path), teacher=teacher, progress=False)
    assert RunDirectory(tmp_path).role("student").epochs() == [0, 1, 2]


@pytest.mark.parametrize("role,interrupt_at", [("teacher", 1), ("student", 2), ("student", 3)])
def test_resume_after_interruption_gives_the_uninterrupted_weights(tmp_path, trained, role, interrupt_at):
    config, reference = trained
    run = RunDirectory(tmp_path)
    run.initialise("", config.seed)
    teacher = load_teacher(config, reference, num_classes=4) if role == "student" else None

    def train(callback=None):
        if role == "student":
            train_student(config, run, teacher=teacher, progress=False, on_epoch_end=callback)
        else:
            train_from_scratch(role, config, run, progress=False, on_epoch_end=callback)

    with pytest.raises(Interrupt):
        train(stop_after(interrupt_at))
    assert run.role(role).latest() == interrupt_at
    train()
    last = reference.role(role).latest()
    resumed, uninterrupted = run.role(role).load(last), reference.role(role).load(last)
    assert_same_weights(resumed["model"], uninterrupted["model"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed["history"]) == strip(uninterrupted["history"])


def test_a_finished_run_is_not_trained_again(trained):
    config, run = trained
    before = run.role("teacher").path(2).stat().st_mtime_ns
    train_from_scratch("teacher", config, run, progress=False)
    assert run.role("teacher").path(2).stat().st_mtime_ns == before


def test_student_needs_a_trained_teacher(tmp_path):
    config = parse_config(tiny_raw())
    with pytest.raises(RuntimeError, match="teacher .* is not trained"):
        train_student(config, RunDirectory(tmp_path), progress=False)


def test_teacher_and_student_features_must_match(tmp_path, trained):
    config, run = trained
    raw = tiny_raw(teacher_model={"arch": "vgg11", "width": 0.25})
    with pytest.raises(ValueError, match="student.layer = 'fc1'.*differ"):
        train_student(parse_config(raw), RunDirectory(tmp_path),
                      teacher=build_network(parse_config(raw).resolved_teacher_model, config, 4, "teacher"),
                      progress=False)
