"""A checkpoint is data and never code (issue 12).

Every file kdlens unpickles (run checkpoints, a teacher checkpoint, the
analysis cache, validate's saved networks) is read with ``weights_only=True``;
a malicious, truncated, foreign or wrong-architecture file is one
``kdlens: error:`` line naming it, and nothing in it runs. Also: files are
written with the mode ``open`` would give them, and a killed analysis resumes
to the uninterrupted answer.
"""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

import kdlens.explain.analyze as analyze
import kdlens.store as store_module
import kdlens.validate as validate
from kdlens.builders import build_network
from kdlens.cli import main
from kdlens.config import parse_config
from kdlens.explain.analyze import AnalysisSettings
from kdlens.errors import CheckpointError
from kdlens.models import build_model
from kdlens.store import (
    CheckpointStore,
    RunDirectory,
    atomic_torch_save,
    atomic_write_text,
    current_umask,
    load_checkpoint_file,
)
from kdlens.train import load_teacher, train_roles

RAW = {
    "seed": 3, "device": "cpu", "train": ["baseline"],
    "data": {"image_size": 32, "num_classes": 3, "train_size": 60, "test_size": 30, "student_fraction": 1.0},
    "model": {"arch": "vgg11", "width": 0.125},
    "baseline": {"epochs": 2, "batch_size": 16},
    "student": {"layer": "fc1", "distill": {"epochs": 1, "batch_size": 16}, "classify": {"epochs": 1, "batch_size": 16}},
}
# the cheapest analysis the command allows: 2 samples, a 4x4 grid, 2 optimisation steps
ANALYZE_OPTIONS = ["--samples", "2", "--grid", "4", "--steps", "2", "--quiet"]
ANALYZE_SETTINGS = AnalysisSettings(layer="fc1", grid=4, steps=2)  # what those options make


class PlantsMarker:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a
    malicious checkpoint could run. If the marker file appears, code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "metrics": {"test_accuracy": 1.0}, "payload": PlantsMarker(marker)}, path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished baseline-only run (epochs 0-2) that each test copies before tampering with it."""
    root = tmp_path_factory.mktemp("trained") / "run"
    train_roles(parse_config(RAW), root, progress=False)
    return root


@pytest.fixture
def run_copy(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def config_file(tmp_path, **changes):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**RAW, **changes}))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlens: error: ") and "\n" not in err, err
    return err


def test_the_malicious_file_really_runs_code_when_loaded_as_code(tmp_path):
    # guards the tests below against passing vacuously
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_malicious_run_checkpoint_is_refused_by_analyze(run_copy, tmp_path, capsys):
    marker = tmp_path / "marker"
    target = run_copy / "baseline" / "checkpoints" / "epoch_001.pt"
    write_malicious(target, marker)
    assert main(["analyze", str(run_copy), *ANALYZE_OPTIONS]) == 2
    err = one_line_error(capsys)
    assert str(target) in err and "refused" in err and "data only" in err
    assert not marker.exists()


def test_malicious_run_checkpoint_is_refused_when_training_resumes(run_copy, tmp_path, capsys):
    marker = tmp_path / "marker"
    target = run_copy / "baseline" / "checkpoints" / "epoch_002.pt"  # the latest: training resumes from it
    write_malicious(target, marker)
    assert main(["train", "--config", str(config_file(tmp_path)), "--out", str(run_copy), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert str(target) in err and "refused" in err
    assert not marker.exists()


def test_malicious_teacher_checkpoint_is_refused(tmp_path, capsys):
    marker, evil = tmp_path / "marker", tmp_path / "teacher.pt"
    write_malicious(evil, marker)
    config = config_file(tmp_path, train=["student"], student={**RAW["student"], "teacher_checkpoint": str(evil)})
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "student.teacher_checkpoint" in err and str(evil) in err and "refused" in err
    assert not marker.exists()


def test_teacher_checkpoint_may_be_a_bare_state_dict_of_the_teacher_model(tmp_path):
    config = parse_config(RAW)
    teacher = build_network(config.resolved_teacher_model, config, 3, init="other")
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    config = parse_config({**RAW, "student": {**RAW["student"], "teacher_checkpoint": str(tmp_path / "teacher.pt")}})
    loaded = load_teacher(config, RunDirectory(tmp_path / "run"), 3)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in teacher.state_dict().items())


def test_teacher_checkpoint_of_another_architecture_names_file_model_and_key(tmp_path):
    other = build_model("resnet18", num_classes=3, image_size=32, width=0.125)
    torch.save({"model": other.state_dict()}, tmp_path / "teacher.pt")
    config = parse_config({**RAW, "student": {**RAW["student"], "teacher_checkpoint": str(tmp_path / "teacher.pt")}})
    with pytest.raises(CheckpointError) as caught:
        load_teacher(config, RunDirectory(tmp_path / "run"), 3)
    message = str(caught.value)
    assert "teacher.pt" in message and "vgg11" in message and "missing key 'stages.conv.0.weight'" in message
    assert "\n" not in message


def test_malicious_analysis_cache_file_is_refused(run_copy, tmp_path, capsys):
    marker = tmp_path / "marker"
    cache = run_copy / "analysis" / f"fc1-{ANALYZE_SETTINGS.key()}" / "baseline" / "epoch_000.pt"
    write_malicious(cache, marker)
    assert main(["analyze", str(run_copy), *ANALYZE_OPTIONS]) == 2
    err = one_line_error(capsys)
    assert "analysis cache file" in err and str(cache) in err and "refused" in err
    assert not marker.exists()


def test_analysis_cache_file_of_other_content_is_an_error(run_copy, capsys):
    cache = run_copy / "analysis" / f"fc1-{ANALYZE_SETTINGS.key()}" / "baseline" / "epoch_000.pt"
    cache.parent.mkdir(parents=True)
    torch.save({0: {"sigma": torch.ones(16)}}, cache)  # no valid / converged / reason
    assert main(["analyze", str(run_copy), *ANALYZE_OPTIONS]) == 2
    err = one_line_error(capsys)
    assert str(cache) in err and "delete the file" in err


def test_malicious_validate_network_is_refused(tmp_path, monkeypatch, capsys):
    tiny = validate.ValidationSettings(train_samples=48, test_samples=16, width=0.125, epochs=1, batch_size=16,
                                       samples=1, grid=4, converged_steps=2, converged_noise_samples=1, map_samples=1)
    monkeypatch.setattr(validate, "QUICK", tiny)
    marker, out = tmp_path / "marker", tmp_path / "validate"
    network = out / "networks" / "object_only.pt"  # the first network validate reads back
    write_malicious(network, marker)
    assert main(["validate", "--quick", "--quiet", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "validation network" in err and str(network) in err and "refused" in err
    assert not marker.exists()


def test_truncated_checkpoint_is_named(run_copy, capsys):
    target = run_copy / "baseline" / "checkpoints" / "epoch_001.pt"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    assert main(["analyze", str(run_copy), *ANALYZE_OPTIONS]) == 2
    err = one_line_error(capsys)
    assert str(target) in err and "truncated or not a torch checkpoint" in err


@pytest.mark.parametrize("content, expected", [
    (b"", "truncated or not a torch checkpoint"),
    (b"not a checkpoint at all\n", "truncated or not a torch checkpoint"),
    (None, "holds a list; expected a dict"),
])
def test_unreadable_files_are_one_checkpoint_error(tmp_path, content, expected):
    path = tmp_path / "file.pt"
    if content is None:
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as caught:
        load_checkpoint_file(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_foreign_file_in_the_checkpoints_folder_names_file_and_key(run_copy, capsys):
    foreign = run_copy / "baseline" / "checkpoints" / "epoch_005.pt"
    weights = load_checkpoint_file(run_copy / "baseline" / "checkpoints" / "epoch_002.pt")["model"]
    torch.save({"model": weights, "note": "copied here by hand"}, foreign)
    assert main(["analyze", str(run_copy), *ANALYZE_OPTIONS]) == 2
    err = one_line_error(capsys)
    assert str(foreign) in err and "'metrics'" in err


def test_checkpoint_of_another_architecture_names_file_arch_and_mismatch(run_copy, capsys):
    target = run_copy / "baseline" / "checkpoints" / "epoch_001.pt"
    state = load_checkpoint_file(target)
    state["model"] = build_model("resnet18", num_classes=3, image_size=32, width=0.125).state_dict()
    torch.save(state, target)
    assert main(["analyze", str(run_copy), *ANALYZE_OPTIONS]) == 2
    err = one_line_error(capsys)
    assert str(target) in err and "vgg11" in err and "missing key 'stages.conv.0.weight'" in err


def test_checkpoint_of_another_width_names_the_shape(run_copy, capsys):
    target = run_copy / "baseline" / "checkpoints" / "epoch_001.pt"
    state = load_checkpoint_file(target)
    state["model"] = build_model("vgg11", num_classes=3, image_size=32, width=0.25).state_dict()
    torch.save(state, target)
    assert main(["analyze", str(run_copy), *ANALYZE_OPTIONS]) == 2
    err = one_line_error(capsys)
    assert str(target) in err and "has shape" in err and "the model's is" in err


def test_run_without_checkpoints_is_an_error_not_an_empty_table(trained, tmp_path, capsys):
    run = tmp_path / "untrained"
    run.mkdir()
    shutil.copy(trained / "config.yaml", run / "config.yaml")
    assert main(["analyze", str(run), *ANALYZE_OPTIONS]) == 2
    err = one_line_error(capsys)
    assert str(run) in err and "train it first" in err
    assert not list(run.rglob("summary-*.json"))


@pytest.mark.parametrize("option, value", [("--samples", "0"), ("--grid", "0"), ("--steps", "0"),
                                           ("--max-epochs", "1"), ("--threshold", "-1"), ("--layer", "fc9")])
def test_bad_analyze_options_are_one_line(run_copy, capsys, option, value):
    options = [*ANALYZE_OPTIONS, option, value]
    assert main(["analyze", str(run_copy), *options]) == 2
    err = one_line_error(capsys)
    assert value in err


def test_grid_larger_than_the_images_is_one_line(run_copy, capsys):
    assert main(["analyze", str(run_copy), *ANALYZE_OPTIONS, "--grid", "64"]) == 2
    assert "grid = 64" in one_line_error(capsys)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_torch_save({"x": torch.ones(1)}, tmp_path / "b.pt")
        CheckpointStore(tmp_path / "role").save(0, {"epoch": 0})
        with open(tmp_path / "reference", "w"):
            pass
    finally:
        os.umask(previous)
    written = [tmp_path / "a.json", tmp_path / "b.pt", tmp_path / "role" / "checkpoints" / "epoch_000.pt"]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(mode)}
    assert (tmp_path / "reference").stat().st_mode & 0o777 == mode


def test_umask_without_proc_falls_back_and_restores_it(monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(store_module, "open", no_proc, raising=False)
    previous = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027  # and the fallback left it as it was
    finally:
        os.umask(previous)


# The command's warm starts take 150 steps over 8 noise draws; these are the
# same code at a cost of seconds. The same overrides in both processes.
CHEAP_WARM_STARTS = {"warm_steps": 2, "noise_samples": 2}

KILLED_ANALYSIS = textwrap.dedent(f"""
    import functools, os, signal, sys
    import torch
    torch.set_num_threads(1)  # as the tests' own process (conftest), so sums agree bit for bit
    import kdlens.explain.analyze as analyze
    from kdlens.cli import main

    analyze.AnalysisSettings = functools.partial(analyze.AnalysisSettings, **{CHEAP_WARM_STARTS!r})
    real, calls = analyze.information_discarding, []

    def dies_on_second_checkpoint(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    analyze.information_discarding = dies_on_second_checkpoint
    sys.exit(main(["analyze", *sys.argv[1:]]))
""")


def test_killed_analysis_resumes_to_the_uninterrupted_summary(trained, tmp_path, capsys, monkeypatch):
    """A real SIGKILL (no ``finally`` runs) in the middle of `kdlens analyze`:
    the cache keeps only whole checkpoints and the rerun completes it."""
    monkeypatch.setattr(analyze, "AnalysisSettings", functools.partial(analyze.AnalysisSettings, **CHEAP_WARM_STARTS))
    interrupted = shutil.copytree(trained, tmp_path / "interrupted")
    uninterrupted = shutil.copytree(trained, tmp_path / "uninterrupted")
    # one engine call per checkpoint (2 samples, one batch): killed while computing epoch 1
    killed = subprocess.run([sys.executable, "-c", KILLED_ANALYSIS, str(interrupted), *ANALYZE_OPTIONS],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    settings = AnalysisSettings(layer="fc1", grid=4, steps=2, **CHEAP_WARM_STARTS)
    cache = interrupted / "analysis" / f"fc1-{settings.key()}"
    assert sorted(p.name for p in (cache / "baseline").iterdir()) == ["epoch_000.pt"]  # no partial file left
    assert not list(cache.glob("summary-*.json"))

    assert main(["analyze", str(interrupted), *ANALYZE_OPTIONS]) == 0
    assert main(["analyze", str(uninterrupted), *ANALYZE_OPTIONS]) == 0
    capsys.readouterr()
    summaries = [json.loads(next((run / "analysis").glob("fc1-*/summary-*.json")).read_text())
                 for run in (interrupted, uninterrupted)]
    assert summaries[0] == summaries[1]
    assert summaries[0]["baseline"]["epochs"] == [0, 1, 2]
