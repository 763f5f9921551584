import json
import math

import pytest
import torch

import kdlens.validate as validate
from kdlens.cli import main
from kdlens.validate import (
    ESTIMATORS,
    NETWORKS,
    ValidationSettings,
    evaluate_bars,
    format_report,
    measured_indices,
    run_validation,
)

# small enough for seconds: the paper estimator's cost is fixed (80 steps x 96 copies a sample)
TINY = ValidationSettings(train_samples=48, test_samples=16, width=0.125, epochs=1, batch_size=16, samples=1,
                          grid=4, converged_steps=10, converged_noise_samples=2, map_samples=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate")
    return out, run_validation(out, progress=False, settings=TINY)


def test_json_shape(tiny_run, strict_json):
    out, summary = tiny_run
    saved = strict_json(out / "validation.json")
    assert saved == json.loads(json.dumps(summary))
    for network in NETWORKS:
        for estimator in ESTIMATORS:
            entry = saved[network][estimator]
            assert {"lambda", "n_fg", "n_bg"} <= set(entry)
            for key in ("lambda", "n_fg", "n_bg"):
                value = entry[key]
                assert value is None or (isinstance(value, float) and math.isfinite(value))
            if entry["lambda"] is None:
                assert entry["reason"]
    assert set(saved["bars"]) == set(ESTIMATORS)
    for bar in saved["bars"].values():
        assert {"lambda_gap", "n_fg_ratio", "passed"} <= set(bar)
    assert saved["accuracy"]["background_cue"]["cue"] == "background"
    assert saved["accuracy"]["random_init"]["trained"] is False
    assert saved["measurement"]["masks_identical_across_cues"] is True
    assert (out / "validation_maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "networks").iterdir()) == sorted(f"{n}.pt" for n in NETWORKS)
    report = format_report(summary)
    assert "object_only" in report and "acceptance bars" in report


def test_rerun_reuses_the_networks_and_gives_the_same_numbers(tiny_run, rerun_matches):
    rerun_matches(*tiny_run, TINY)


def test_other_settings_in_the_same_directory_are_an_error(tiny_run):
    out, _ = tiny_run
    with pytest.raises(ValueError, match="other settings"):
        run_validation(out, progress=False, settings=ValidationSettings(**{**TINY.__dict__, "epochs": 2}))


def test_cli_prints_the_table_and_the_files(tiny_run, monkeypatch, capsys):
    out, _ = tiny_run
    monkeypatch.setattr(validate, "QUICK", TINY)  # everything is reused from the tiny run
    assert main(["validate", "--quick", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "background_cue" in printed and "lambda(object_only)" in printed
    assert str(out / "validation.json") in printed and str(out / "validation_maps.png") in printed


def test_thread_count_is_restored(tiny_run):
    out, _ = tiny_run
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_validation(out, progress=False, settings=TINY)  # reused: no work at 2 threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_measured_images_have_the_same_object_under_both_cues():
    settings = ValidationSettings(train_samples=60)
    obj = validate._dataset(settings, "train", "object", 60)
    bg = validate._dataset(settings, "train", "background", 60)
    indices = measured_indices(bg, 8)
    assert len(indices) == 8 and len(set(indices)) == 8
    assert sorted(i % settings.num_classes for i in indices) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(obj.masks[indices], bg.masks[indices])
    with pytest.raises(ValueError, match="same object under both cues"):
        measured_indices(bg, 60)


def _entries(lo, fo, lb, fb):
    results = {n: {e: {"lambda": None, "n_fg": None, "n_bg": None} for e in ESTIMATORS} for n in NETWORKS}
    for e in ESTIMATORS:
        results["object_only"][e].update({"lambda": lo, "n_fg": fo})
        results["background_cue"][e].update({"lambda": lb, "n_fg": fb})
    return results


@pytest.mark.parametrize(
    "lo, fo, lb, fb, gap_passed, fg_passed",
    [
        (0.8, 10.0, 0.4, 5.0, True, True),  # gap 0.4, exactly 2x
        (0.8, 9.9, 0.55, 5.0, False, False),  # gap 0.25, below 2x
        (0.8, 3.0, 0.5, 0.0, True, True),  # gap exactly 0.3; no fg points in background_cue
        (0.8, 0.0, 0.2, 0.0, True, False),  # two zeros show nothing
        (None, 4.0, 0.2, 1.0, None, True),  # lambda undefined
        (0.9, None, 0.2, None, True, None),
    ],
)
def test_bars(lo, fo, lb, fb, gap_passed, fg_passed):
    bars = evaluate_bars(_entries(lo, fo, lb, fb))
    for estimator in ESTIMATORS:
        bar = bars[estimator]
        assert bar["lambda_gap"]["passed"] is gap_passed
        assert bar["n_fg_ratio"]["passed"] is fg_passed
        if gap_passed is None:
            assert bar["lambda_gap"]["value"] is None and bar["lambda_gap"]["reason"]
        if fg_passed is None:
            assert bar["n_fg_ratio"]["reason"]
        verdicts = (gap_passed, fg_passed)
        assert bar["passed"] == (None if None in verdicts else all(verdicts))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="grid"):
        ValidationSettings(grid=64)
    with pytest.raises(ValueError, match="samples"):
        ValidationSettings(samples=0)
    assert validate.QUICK.train_samples < validate.FULL.train_samples
    assert validate.QUICK.width < validate.FULL.width


@pytest.mark.slow
def test_quick_validation_ranks_the_planted_cues(tmp_path):
    """The direction of the known answer: the object-only network has the larger lambda
    under both estimators. The issue's bars (a gap >= 0.3, N_fg >= 2x) are not met at the
    quick size (4 images, 8x8 grid): see the closing note; `kdlens validate` reports them."""
    summary = run_validation(tmp_path, quick=True, progress=False)
    assert summary["accuracy"]["object_only"]["test_accuracy"] > 0.9
    assert summary["accuracy"]["background_cue"]["test_accuracy"] > 0.9
    for estimator in ESTIMATORS:
        gap = summary["bars"][estimator]["lambda_gap"]["value"]
        assert gap is not None and gap > 0, format_report(summary)
