import json

import pytest

from kdlens.cli import main
from kdlens.config import load_config
from kdlens.experiment import demo_config, run_demo


@pytest.mark.parametrize("modality", ["image", "points", "text"])
@pytest.mark.parametrize("quick", [False, True])
def test_printed_config_is_the_demo(quick, modality, tmp_path, capsys):
    assert main(["demo", "--modality", modality, "--print-config", *(["--quick"] if quick else [])]) == 0
    printed = tmp_path / "demo.yaml"
    printed.write_text(capsys.readouterr().out)
    assert load_config(printed) == demo_config(quick=quick, modality=modality)


def test_quick_demo_is_smaller():
    quick, full = demo_config(quick=True), demo_config()
    assert quick.data.train_size < full.data.train_size and quick.teacher.epochs < full.teacher.epochs


@pytest.mark.slow
def test_quick_demo_writes_the_whole_report(tmp_path):
    files = run_demo(tmp_path, quick=True, progress=False)
    for name in ("report.md", "report.html", "metrics.json"):
        assert (tmp_path / name).is_file() and name in files
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["hypotheses"]["primary"] == "converged"
    assert set(metrics["hypotheses"]["converged"]) == {"h1", "h2", "h3"}
    for estimator in ("converged", "paper"):
        models = metrics["layers"]["fc1"][estimator]
        for key in ("n_fg", "n_bg", "lambda", "accuracy", "per_sample"):
            assert all(key in models[role] for role in ("teacher", "student", "baseline", "random"))
    for key in ("d_mean", "d_var", "rho"):  # the paper estimator measures the last checkpoints only
        assert all(key in metrics["layers"]["fc1"]["converged"][role] for role in ("student", "baseline"))
    assert list((tmp_path / "figures").glob("*.png"))


@pytest.mark.slow
def test_quick_point_cloud_demo_writes_the_whole_report(tmp_path):
    files = run_demo(tmp_path, quick=True, progress=False, modality="points")
    for name in ("report.md", "report.html", "metrics.json", "figures/maps_fc1_converged.png",
                 "figures/maps_fc2_converged.png"):
        assert (tmp_path / name).is_file() and name in files
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for layer in ("fc1", "fc2"):  # the analysis at fc1 and fc2 (issue 13)
        models = metrics["layers"][layer]["converged"]
        assert {"teacher", "student", "baseline", "random"} <= set(models)
        assert len(models["baseline"]["epochs"]) == 3  # analysis.max_epochs of the quick demo
    report = (tmp_path / "report.md").read_text()
    assert "PointNet" in report and "At most 3 evenly spaced checkpoints" in report


@pytest.mark.slow
def test_quick_text_demo_writes_the_whole_report(tmp_path):
    files = run_demo(tmp_path, quick=True, progress=False, modality="text")
    for name in ("report.md", "report.html", "metrics.json", "figures/maps_layer2_converged.png"):
        assert (tmp_path / name).is_file() and name in files
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    models = metrics["layers"]["layer2"]["converged"]  # the last hidden layer, as the paper (Sec. 4.1)
    assert {"teacher", "student", "baseline", "random"} <= set(models)
    assert set(metrics["hypotheses"]["converged"]) == {"h1", "h2", "h3"}
    assert "BERT" in (tmp_path / "report.md").read_text()
