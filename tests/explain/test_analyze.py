"""Knowledge points over a run's checkpoints: epoch choice, cache, resume, metrics."""

import pytest
import torch

import kdlens.explain.analyze as analyze
from kdlens.config import parse_config
from kdlens.explain.analyze import AnalysisSettings, analyze_role, summarize_role
from kdlens.train import train_roles

FAST = AnalysisSettings(layer="fc1", grid=4, steps=20, warm_steps=5, noise_samples=2, batch_size=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    config = parse_config({
        "seed": 1, "device": "cpu",
        "data": {"image_size": 32, "num_classes": 3, "train_size": 60, "test_size": 30, "student_fraction": 0.5},
        "model": {"arch": "vgg11", "width": 0.125},
        "teacher": {"epochs": 2, "batch_size": 16},
        "baseline": {"epochs": 2, "batch_size": 16},
        "student": {"layer": "fc1", "distill": {"epochs": 2, "batch_size": 16, "lr": 0.01},
                    "classify": {"epochs": 2, "batch_size": 16}},
    })
    return train_roles(config, tmp_path_factory.mktemp("run"), progress=False)


def count_engine_calls(monkeypatch):
    calls = []
    real = analyze.information_discarding

    def counted(model, inputs, *args, **kwargs):
        calls.append((inputs.shape[0], kwargs["steps"]))
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(analyze, "information_discarding", counted)
    return calls


def test_student_is_analysed_only_where_its_layer_moved(run):
    student = analyze_role(run, "student", FAST, 3, progress=False)
    assert student.epochs == [0, 1, 2]  # epochs 3-4 train only fc2/fc3
    assert student.entropy.shape == (3, 3, 16) and student.valid.shape == (3, 3)
    assert torch.isfinite(student.entropy).all()
    baseline = analyze_role(run, "baseline", FAST, 3, progress=False)
    assert baseline.epochs == [0, 1, 2]
    assert baseline.distances[0] == 0 and (baseline.distances.diff() > 0).all()


def test_cache_is_reused_and_extended(run, monkeypatch):
    first = analyze_role(run, "baseline", FAST, 3, progress=False)
    calls = count_engine_calls(monkeypatch)
    again = analyze_role(run, "baseline", FAST, 3, progress=False)
    assert calls == [] and torch.equal(first.entropy, again.entropy)
    more = analyze_role(run, "baseline", FAST, 5, progress=False)
    assert sum(n for n, _ in calls) == 2 * 3  # two new samples at each of three epochs
    assert torch.equal(more.entropy[:, :3], first.entropy)
    # later epochs start from the previous epoch's sigma with the short schedule
    assert [steps for _, steps in calls] == [FAST.steps, FAST.warm_steps, FAST.warm_steps]


def test_paper_records_measured_with_another_default_weight_are_measured_again(run, monkeypatch):
    """The paper's recipe takes lambda from the architecture's defaults; a cache written
    when that default was different is not reused."""
    settings = AnalysisSettings(layer="fc1", estimator="paper", grid=4, batch_size=4)
    first = analyze_role(run, "teacher", settings, 1, epochs=[2], progress=False)
    calls = count_paper_calls(monkeypatch)
    analyze_role(run, "teacher", settings, 1, epochs=[2], progress=False)
    assert calls == []  # reused
    monkeypatch.setattr(analyze, "paper_defaults", lambda arch: (3.0, 0.2))
    again = analyze_role(run, "teacher", settings, 1, epochs=[2], progress=False)
    assert calls == [3.0] and not torch.equal(first.entropy, again.entropy)


def count_paper_calls(monkeypatch):
    calls = []
    real = analyze.information_discarding

    def counted(model, inputs, *args, **kwargs):
        calls.append(kwargs["entropy_weight"])
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(analyze, "information_discarding", counted)
    return calls


def test_interrupted_analysis_resumes_to_the_same_answer(run, tmp_path, monkeypatch):
    settings = AnalysisSettings(layer="conv", grid=4, steps=10, warm_steps=4, noise_samples=2, batch_size=2)
    reference = analyze_role(run, "baseline", settings, 4, progress=False)
    # a fresh cache (other seed), interrupted after three engine calls
    other = AnalysisSettings(**{**settings.__dict__, "seed": 5})
    real, calls = analyze.information_discarding, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(analyze, "information_discarding", flaky)
    with pytest.raises(KeyboardInterrupt):
        analyze_role(run, "baseline", other, 4, progress=False)
    monkeypatch.setattr(analyze, "information_discarding", real)
    resumed = analyze_role(run, "baseline", other, 4, progress=False)
    uninterrupted_dir = run.root / "analysis" / f"conv-{other.key()}"
    assert uninterrupted_dir.is_dir()
    import shutil
    shutil.rmtree(uninterrupted_dir)
    fresh = analyze_role(run, "baseline", other, 4, progress=False)
    assert torch.equal(resumed.entropy, fresh.entropy)
    assert not torch.equal(resumed.entropy, reference.entropy)  # the seed matters


def test_summary_has_the_papers_metrics(run):
    summary = summarize_role(analyze_role(run, "student", FAST, 3, progress=False), FAST)
    for key in ("n_fg", "n_bg", "lambda", "accuracy", "d_mean", "d_var", "rho"):
        assert key in summary
    assert [row["epoch"] for row in summary["per_epoch"]] == [0, 1, 2]
    final = run.role("student").load(4)["metrics"]["test_accuracy"]
    assert summary["accuracy"] == final  # the trained student's, not the end of distillation
    teacher = summarize_role(analyze_role(run, "teacher", FAST, 3, epochs=[2], progress=False), FAST)
    assert "d_mean" not in teacher and teacher["epochs"] == [2]


def test_bad_requests_name_the_value(run):
    with pytest.raises(ValueError, match="samples = 500"):
        analyze_role(run, "baseline", FAST, 500, progress=False)
    with pytest.raises(ValueError, match=r"epochs \[9\]"):
        analyze_role(run, "baseline", FAST, 2, epochs=[9], progress=False)
    with pytest.raises(KeyError, match="fc9"):
        analyze_role(run, "baseline", AnalysisSettings(layer="fc9"), 2, progress=False)
