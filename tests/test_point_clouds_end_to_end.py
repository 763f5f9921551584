"""Point clouds through the whole house: a config of point data and a point
model trains the three roles, and the analysis measures knowledge points with
one unit per point (tiny sizes; the numbers mean nothing here)."""

import json

import pytest
import yaml

from kdlens.cli import main
from kdlens.config import ConfigError, parse_config

TINY = {
    "device": "cpu",
    "data": {"name": "point_shapes", "num_classes": 3, "train_size": 36, "test_size": 12, "num_points": 24,
             "background_points": 12, "student_fraction": 0.5},
    "model": {"arch": "pointnet", "width": 0.125},
    "teacher": {"epochs": 1, "batch_size": 12},
    "baseline": {"epochs": 1, "batch_size": 12},
    "student": {"layer": "fc1", "distill": {"epochs": 1, "lr": 0.003, "batch_size": 6},
                "classify": {"epochs": 1, "batch_size": 6}},
}


@pytest.mark.parametrize("arch", ["pointnet", "pointnet2"])
def test_point_clouds_train_and_analyse(tmp_path, capsys, arch):
    config = tmp_path / "points.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "arch": arch}}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    assert main(["analyze", str(out), "--samples", "2", "--steps", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "one unit per point" in printed
    summary = json.loads(next((out / "analysis").glob("fc1-*/summary-*.json")).read_text())
    for role in ("teacher", "random", "student", "baseline"):
        counts = summary[role]["per_sample"]
        assert all(fg + bg <= 36 for fg, bg in zip(counts["n_fg"], counts["n_bg"]) if fg is not None)
    # the paper's recipe runs on clouds too, with b of Sec. 4.1 (0.5 for PointNet, else 0.25) and our lambda 7
    b = 0.5 if arch == "pointnet" else 0.25
    assert main(["analyze", str(out), "--samples", "1", "--estimator", "paper", "--quiet"]) == 0
    summary = json.loads(next((out / "analysis").glob(f"fc1-*/summary-b{b}-*.json")).read_text())
    assert summary["teacher"]["rule"]["threshold"] == b
    assert summary["teacher"]["per_sample"]["n_fg"][0] is not None


@pytest.mark.parametrize("data,model,expected", [
    ({"name": "point_shapes"}, {"arch": "vgg11"}, "model.arch = 'vgg11' takes image input"),
    ({"name": "synthetic"}, {"arch": "dgcnn"}, "model.arch = 'dgcnn' takes points input"),
])
def test_a_model_must_take_the_data(data, model, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config({"data": data, "model": model})
