"""``kdlens compare`` with IEP and sample rates on a tiny config: the rate
table, the IEP figures and distances, and the refusal of a layer for IEP."""

import json

import pytest

from kdlens.compare import parse_compare_config, run_comparison

TINY = {
    "seeds": [0],
    "device": "cpu",
    "data": {"image_size": 32, "num_classes": 3, "train_size": 48, "test_size": 24},
    "teacher_model": {"arch": "vgg11", "width": 0.125},
    "model": {"arch": "vgg11", "width": 0.0625},  # narrower: IEP needs its connectors
    "teacher": {"epochs": 1, "batch_size": 16},
    "student": {"epochs": 1, "batch_size": 16},
    "sample_rates": [1.0, 0.5],
    "methods": ["baseline", {"name": "iep", "options": {"mpnn_epochs": 1, "points": ["stage3", "stage4", "stage5"]}},
                {"name": "iep", "label": "IEP+BB", "options": {"mpnn_epochs": 1, "knowledge": ["int", "alt", "bb"]}}],
    "analysis": {"samples": 8, "relevance_images": 1, "sharpness_sigmas": [0.0], "sharpness_draws": 1,
                 "iep_images_per_class": 2},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare-iep")
    return out, run_comparison(parse_compare_config(TINY), out, progress=False)


def test_every_rate_is_trained_and_reported(finished):
    out, files = finished
    results = json.loads((out / "results.json").read_text())
    assert set(results["by_rate"]) == {"100%", "50%"}
    assert results["students"] == results["by_rate"]["100%"]
    for rate in ("rate100", "rate50"):
        for title in ("Student", "IEP", "IEP+BB"):
            assert (out / "students" / rate / title / "seed0" / "checkpoints").is_dir()
    report = (out / "compare.md").read_text()
    assert "| Rate | Student | IEP | IEP+BB |" in report
    assert "IEP is the most accurate at 50%" in report and "IEP's gain over Student grows as the rate falls" in report
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 3 and {line.split(",")[0] for line in lines[1:]} == {"100%", "50%"}
    for name in ("figures/rates.png", "figures/iep_IEP_knowledge.png", "figures/iep_IEP_components.png",
                 "figures/iep_IEP+BB_knowledge.png", "iep.json"):
        assert name in files and (out / name).stat().st_size > 0


def test_iep_knowledge_is_measured_for_its_own_student(finished):
    out, _ = finished
    iep = json.loads((out / "iep.json").read_text())
    assert iep["IEP"]["points"] == ["stage3", "stage4", "stage5"]
    assert len(iep["IEP"]["mpnn_losses"]) == 1
    # the students are narrower: only the IEP student has trained connectors
    assert set(iep["IEP"]["distances"]) == {"IEP"}
    assert all(v >= 0 for v in iep["IEP"]["distances"]["IEP"].values())


def test_a_layer_for_iep_is_refused():
    with pytest.raises(ValueError, match="iep taps its own sensing points; give options.points"):
        parse_compare_config({**TINY, "methods": ["baseline", {"name": "iep", "layer": "conv"}]})
    with pytest.raises(ValueError, match=r"sample_rates.*\(0, 1\]"):
        parse_compare_config({**TINY, "sample_rates": [1.0, 0.0]})
