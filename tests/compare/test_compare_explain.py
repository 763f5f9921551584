"""``kdlens compare --explain``: the knowledge points of every compared student, end to end on a tiny config."""

import json
import math

import pytest
import yaml

from kdlens.cli import main
from kdlens.compare import parse_compare_config, run_comparison
from kdlens.errors import UsageError
from kdlens.report.tables import VERDICTS

TINY = {
    "seeds": [0, 1],
    "device": "cpu",
    "data": {"image_size": 32, "num_classes": 3, "train_size": 48, "test_size": 24},
    "teacher_model": {"arch": "vgg11", "width": 0.125},
    "model": {"arch": "vgg11", "width": 0.125},
    "teacher": {"epochs": 2, "batch_size": 16},
    "student": {"epochs": 2, "batch_size": 16},
    "methods": ["baseline", "kd", "at"],
    "analysis": {"enabled": False},
    "explain": {"samples": 2, "max_epochs": 3},
}


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain")
    config = tmp_path_factory.mktemp("config") / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["compare", "--config", str(config), "--out", str(out), "--explain", "--quiet"]) == 0
    return out, config


def _finite_numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _finite_numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _finite_numbers(v)
    elif isinstance(value, float):
        yield value


def test_every_student_the_teacher_and_random_weights_are_measured(explained):
    out, _ = explained
    points = json.loads((out / "knowledge_points.json").read_text())
    assert set(points["methods"]) == {"Student", "KD", "AT"}
    assert set(points["references"]) == {"Teacher", "Random"}
    assert points["layer"] == "fc1" and points["samples"] == 2 and points["seed"] == 0
    for summary in points["methods"].values():
        assert summary["epochs"] == [0, 1, 2]  # every checkpoint of a 2-epoch student: d_mean, rho defined
        assert {"n_fg", "n_bg", "lambda", "d_mean", "d_var", "rho", "accuracy"} <= set(summary)
    assert points["references"]["Teacher"]["epochs"] == [2] and points["references"]["Random"]["epochs"] == [0]
    assert set(points["verdicts"]) == {"KD", "AT"}
    for verdicts in points["verdicts"].values():
        assert set(verdicts) == {"h1", "h2", "h3"} and all(v["verdict"] in VERDICTS for v in verdicts.values())
    assert all(math.isfinite(x) for x in _finite_numbers(points))


def test_the_report_has_the_table_the_figure_and_the_verdicts(explained):
    out, _ = explained
    report = (out / "compare.md").read_text()
    assert "## Knowledge points per method" in report
    table = [line for line in report.splitlines() if line.startswith("| KD |") and "N_fg" not in line]
    assert len(table) == 2  # the error table's row and the knowledge-point table's row
    assert "### KD against the independent student" in report and "Hypothesis 1" in report
    assert (out / "figures" / "lambda_accuracy.png").stat().st_size > 0


def test_a_second_explain_reads_the_cache_and_other_analysis_settings_keep_the_run(explained, capsys):
    out, config = explained
    cached = sorted((out / "analysis").rglob("epoch_*.pt"))
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    changed = {**TINY, "explain": {"samples": 2, "max_epochs": 3, "layer": "fc1"}, "analysis": {"enabled": False}}
    config.write_text(yaml.safe_dump(changed))
    assert main(["compare", "--config", str(config), "--out", str(out), "--explain", "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps  # nothing measured again
    other = {**TINY, "student": {"epochs": 3, "batch_size": 16}}
    with pytest.raises(UsageError, match="different config"):
        run_comparison(parse_compare_config(other), out, progress=False)


def test_an_explained_seed_must_be_compared():
    with pytest.raises(UsageError, match="explain.seed"):
        parse_compare_config({**TINY, "explain": {"seed": 7}})


def test_rank_association_by_hand():
    from kdlens.compare.report import rank_association

    # 5 pairs in the same order: r = 1; exactly 2 of the 5! = 120 orders reach |r| = 1, p = 2/120
    r, p = rank_association([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert r == pytest.approx(1.0) and p == pytest.approx(2 / 120, abs=0.005)
    # ranks (0, 2, 1, 3) vs (0, 1, 2, 3): sum d^2 = 2, r = 1 - 6 * 2 / (4 * 15) = 0.8; of the 24 orders
    # 8 reach |r| >= 0.8 (r = +-1 and the three adjacent swaps each way): p = 1/3
    r, p = rank_association([1, 2, 3, 4], [1, 3, 2, 4])
    assert r == pytest.approx(0.8) and p == pytest.approx(1 / 3, abs=0.01)
    assert rank_association([1, 1, 1], [1, 2, 3]) is None and rank_association([1, 2], [1, 2]) is None
