"""``kdlens validate --modality points``: planted knowledge in point clouds."""

import dataclasses
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
    format_report,
    measured_indices,
    run_validation,
)

# small enough for seconds: the paper estimator's cost is fixed (80 steps x 96 copies a cloud)
TINY = ValidationSettings(modality="points", arch="pointnet", num_classes=4, num_points=16, background_points=16,
                          train_samples=48, test_samples=16, width=0.125, epochs=1, batch_size=16, lr=0.01,
                          samples=1, converged_steps=10, converged_noise_samples=2, map_samples=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate-points")
    return out, run_validation(out, progress=False, settings=TINY)


def test_json_shape(tiny_run, strict_json):
    out, summary = tiny_run
    saved = strict_json(out / "validation.json")
    assert saved == json.loads(json.dumps(summary))
    for network in NETWORKS:
        for estimator in ESTIMATORS:
            entry = saved[network][estimator]
            for key in ("lambda", "n_fg", "n_bg"):
                value = entry[key]
                assert value is None or (isinstance(value, float) and math.isfinite(value))
            if entry["lambda"] is None:
                assert entry["reason"]
            assert len(entry["per_sample_n_fg"]) == TINY.samples
    assert set(saved["bars"]) == set(ESTIMATORS)
    for bar in saved["bars"].values():
        assert {"lambda_gap", "n_fg_ratio", "passed"} <= set(bar)
    assert saved["accuracy"]["background_cue"]["cue"] == "background"
    assert saved["accuracy"]["random_init"]["trained"] is False
    assert saved["accuracy"]["object_only"]["chance"] == 1 / TINY.num_classes
    settings = saved["settings"]
    assert settings["modality"] == "points" and settings["arch"] == "pointnet"
    assert settings["num_points"] == 16 and "image_size" not in settings and "grid" not in settings
    measurement = saved["measurement"]
    assert measurement["same_object_across_cues"] is True
    assert isinstance(measurement["masks_identical_across_cues"], bool)
    assert measurement["units"] == "one unit per point" and "grid" not in measurement
    # the paper estimator's b for PointNet (Sec. 4.1); the converged rule as for images
    assert measurement["rules"]["paper"] == {"threshold": 0.5, "relative": False, "baseline": "sample"}
    assert measurement["rules"]["converged"]["relative"] is True
    # object and background points: 16 each
    assert measurement["foreground_unit_share"] == {"object": 0.5, "background": 0.5}
    assert (out / "validation_maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "networks").iterdir()) == sorted(f"{n}.pt" for n in NETWORKS)
    report = format_report(summary)
    assert "foreground share of the points: 0.500" in report and "acceptance bars" in report


def test_rerun_reuses_the_networks_and_gives_the_same_numbers(tiny_run, rerun_matches):
    rerun_matches(*tiny_run, TINY)


def test_other_point_settings_in_the_same_directory_are_an_error(tiny_run):
    out, _ = tiny_run
    with pytest.raises(ValueError, match="other settings"):
        run_validation(out, progress=False, settings=dataclasses.replace(TINY, num_points=8))


def test_cli_runs_the_point_clouds(tiny_run, monkeypatch, capsys):
    out, _ = tiny_run
    monkeypatch.setattr(validate, "POINTS_QUICK", TINY)  # everything is reused from the tiny run
    assert main(["validate", "--modality", "points", "--quick", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "on point clouds" in printed and "foreground share of the points" in printed
    assert "background_cue" in printed and "lambda(object_only)" in printed
    assert str(out / "validation.json") in printed and str(out / "validation_maps.png") in printed


def test_measured_clouds_have_the_same_object_under_both_cues():
    settings = dataclasses.replace(TINY, num_points=32, background_points=24, train_samples=80)
    obj = validate._dataset(settings, "train", "object", 80)
    bg = validate._dataset(settings, "train", "background", 80)
    indices = measured_indices(bg, 8)
    assert len(indices) == 8 and len(set(indices)) == 8
    assert sorted(i % settings.num_classes for i in indices) == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in indices:
        label = i % settings.num_classes
        assert int(obj.object_families[i]) == int(bg.object_families[i]) == label
        # the object's points are the same; the background is the cue's: other families vs the label's
        assert torch.equal(validate._sorted_rows(obj.points[i][obj.masks[i]]),
                           validate._sorted_rows(bg.points[i][bg.masks[i]]))
        assert label not in obj.background_families[i].tolist()
        assert set(bg.background_families[i].tolist()) == {label}
    clouds = validate.KINDS["points"]
    assert clouds.same_object(obj, bg, torch.tensor(indices))
    others = [i for i in range(80) if int(bg.object_families[i]) != i % settings.num_classes]
    assert not clouds.same_object(obj, bg, torch.tensor(others[:1]))  # another family: another object
    with pytest.raises(ValueError, match="same object under both cues"):
        measured_indices(bg, 60)


def test_point_settings_are_checked():
    with pytest.raises(ValueError, match="modality"):
        ValidationSettings(modality="words")
    with pytest.raises(ValueError, match="pointnet"):
        ValidationSettings(modality="image", arch="pointnet")
    with pytest.raises(ValueError, match="vgg11"):
        ValidationSettings(modality="points")  # the image default arch
    with pytest.raises(ValueError, match="background_points"):
        dataclasses.replace(TINY, background_points=0)
    with pytest.raises(ValueError, match="settings are for 'points'"):
        run_validation("unused", progress=False, settings=TINY, modality="image")
    # the image settings' record is unchanged but for the modality
    record = ValidationSettings().record()
    assert record["modality"] == "image" and "num_points" not in record and record["grid"] == 16
    for size in (validate.POINTS_FULL, validate.POINTS_QUICK):
        assert size.modality == "points" and size.arch == "pointnet"
    assert validate.sizes("points", True) is validate.POINTS_QUICK
    assert validate.sizes("image", False) is validate.FULL
    assert validate.POINTS_QUICK.train_samples < validate.POINTS_FULL.train_samples


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate-points-quick")
    return run_validation(out, quick=True, progress=False, modality="points")


@pytest.mark.slow
def test_quick_point_validation_trains_both_networks(quick_run):
    """Both trained PointNets learn their cue well above chance (1/6), and the measured
    clouds hold the same object under both cues."""
    summary = quick_run
    chance = 1 / validate.POINTS_QUICK.num_classes
    assert summary["accuracy"]["object_only"]["test_accuracy"] > 2 * chance, format_report(summary)
    assert summary["accuracy"]["background_cue"]["test_accuracy"] > 2 * chance, format_report(summary)
    assert summary["accuracy"]["random_init"]["trained"] is False
    assert summary["measurement"]["same_object_across_cues"] is True


@pytest.mark.slow
def test_quick_point_validation_ranks_the_planted_cues(quick_run):
    """The direction of the known answer on clouds: the object-only PointNet has the
    larger lambda under the converged estimator. The bars themselves (a gap >= 0.3,
    N_fg >= 2x) are reported by `kdlens validate --modality points`.

    A weak check: with 4 measured clouds the gap is noisy. When written it came out
    +0.170 (paper +0.017) at POINTS_QUICK, but -0.026 (paper +0.147) with 3000 instead
    of 2000 training clouds, and +0.035 (paper +0.082) at POINTS_FULL: on PointNet most
    knowledge points of every network, random weights included, lie on the background."""
    summary = quick_run
    gap = summary["bars"]["converged"]["lambda_gap"]["value"]
    assert gap is not None and gap > 0, format_report(summary)
