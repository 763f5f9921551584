"""``kdlens compare`` end to end on a tiny config: tables, figures, resume."""

import json

import pytest
import yaml

from kdlens.cli import main
from kdlens.compare import parse_compare_config, run_comparison

TINY = {
    "seeds": [0, 1],
    "device": "cpu",
    "data": {"image_size": 32, "num_classes": 4, "train_size": 64, "test_size": 32},
    "teacher_model": {"arch": "vgg11", "width": 0.125},
    "model": {"arch": "vgg11", "width": 0.25},  # the student larger than the teacher
    "teacher": {"epochs": 1, "batch_size": 32},
    "student": {"epochs": 1, "batch_size": 32},
    "methods": ["baseline", "kd", "at", "od",
                {"name": "ft", "options": {"paraphraser_epochs": 1}},
                {"name": "ie_at", "options": {"paraphraser_epochs": 1}},
                {"name": "ie_ft", "options": {"paraphraser_epochs": 1}},
                {"name": "ie_od", "options": {"paraphraser_epochs": 1}}],
    "mutual": ["dml", "ie_dml"],
    "analysis": {"samples": 16, "relevance_images": 2, "sharpness_sigmas": [0.0, 0.05], "sharpness_draws": 1},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    files = run_comparison(parse_compare_config(TINY), out, progress=False)
    return out, files


def test_every_method_and_seed_is_trained_and_tabulated(finished):
    out, files = finished
    results = json.loads((out / "results.json").read_text())
    assert set(results["students"]) == {"Student", "KD", "AT", "OD", "FT", "IE-AT", "IE-FT", "IE-OD"}
    assert all(set(per_seed) == {"0", "1"} for per_seed in results["students"].values())
    assert set(results["mutual"]) == {"Independent", "DML", "IE-DML"}
    header = (out / "table.md").read_text().splitlines()[0]
    assert header.startswith("| Teacher: vgg11 ×0.125 | Student: vgg11 ×0.25 | KD | AT | OD | FT | IE-AT")
    for name in ("compare.md", "results.csv", "analysis.json", "figures/errors.png", "figures/relevance.png",
                 "figures/cka.png", "figures/active_neurons.png", "figures/sharpness.png"):
        assert name in files and (out / name).stat().st_size > 0


def test_the_analysis_covers_the_papers_figure_4(finished):
    out, _ = finished
    analysis = json.loads((out / "analysis.json").read_text())
    assert set(analysis["cka"]) == {"IE-AT", "IE-FT", "IE-OD"}
    for values in analysis["cka"].values():
        assert 0 <= values["ie"] <= 1 + 1e-6 and 0 <= values["independent"] <= 1 + 1e-6
    assert {"Teacher", "Student", "IE-FT"} <= set(analysis["active_neurons"])
    assert set(analysis["active_neurons"]["IE-FT"]) == {"all", "inheritance", "independent_inheritance"}
    assert [p["sigma"] for p in analysis["sharpness"]["IE-FT"]] == [0.0, 0.05]
    report = (out / "compare.md").read_text()
    assert "## The paper's claims on these numbers" in report and "IE-FT beats FT" in report


def test_a_second_run_resumes_without_training_again(finished, tmp_path):
    out, _ = finished
    before = (out / "results.json").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("epoch_*.pt")}
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**TINY, "student": {**TINY["student"], "epochs": 2}}))
    # a config that trains differently must not reuse the run directory
    assert main(["compare", "--config", str(config_file), "--out", str(out), "--quiet"]) == 2
    config_file.write_text(yaml.safe_dump(TINY))
    assert main(["compare", "--config", str(config_file), "--out", str(out), "--quiet"]) == 0
    assert (out / "results.json").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("epoch_*.pt")} == stamps


def test_cli_names_a_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [kd]\n")
    assert main(["compare", "--config", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "expected 'baseline' among them" in capsys.readouterr().err


def test_mutual_learning_alone_needs_no_teacher(tmp_path):
    raw = {**TINY, "seeds": [0], "methods": ["baseline"], "mutual": ["ie_dml"]}
    files = run_comparison(parse_compare_config(raw), tmp_path, progress=False)
    assert not (tmp_path / "teacher").exists()
    report = (tmp_path / "compare.md").read_text()
    assert "No teacher" in report and "Independent Net 1" in report and "IE-DML Net 2" in report
    assert "analysis.json" not in files
