"""The report: Table 5 comparison, hypothesis verdicts, and the written files."""

import json

import torch

from kdlens.report import hypothesis_verdicts, write_report
from kdlens.report.tables import fmt, markdown_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def summary(n_fg, n_bg, lam, acc, d_mean=None, d_var=None, rho=None, *, dynamics=True, epochs=(0, 1, 2)):
    per_epoch = [
        {"epoch": e, "n_fg": n_fg * (k + 1) / len(epochs), "n_bg": n_bg, "lambda": lam,
         "test_accuracy": acc * (k + 1) / len(epochs), "weight_distance": 0.5 * k}
        for k, e in enumerate(epochs)
    ]
    out = {"n_fg": n_fg, "n_bg": n_bg, "lambda": lam, "accuracy": acc, "epochs": list(epochs),
           "samples": 3, "per_epoch": per_epoch}
    if dynamics:
        out.update(d_mean=d_mean, d_var=d_var, rho=rho)
    return out


def layer(student, baseline):
    return {"teacher": summary(30.0, 5.0, 0.86, 0.9, dynamics=False), "student": student, "baseline": baseline}


GOOD_S = summary(20.0, 4.0, 0.83, 0.8, 0.6, 0.1, 0.7)
GOOD_B = summary(15.0, 5.0, 0.75, 0.7, 1.2, 0.9, 0.5)


def test_all_three_hypotheses_hold():
    v = hypothesis_verdicts({"fc1": layer(GOOD_S, GOOD_B)}, "fc1")
    assert (v["h1"], v["h2"], v["h3"]) == (True, True, True)
    assert v["per_layer"]["fc1"]["h2"] is True
    assert "holds" in v["sentences"]["h1"] and "20.00" in v["sentences"]["h1"] and "15.00" in v["sentences"]["h1"]


def test_h1_fails_when_student_has_fewer_foreground_points():
    student = summary(10.0, 4.0, 0.83, 0.8, 0.6, 0.1, 0.7)
    v = hypothesis_verdicts({"fc1": layer(student, GOOD_B), "conv": layer(GOOD_S, GOOD_B)}, "fc1")
    assert v["h1"] is False and v["h2"] is True and v["h3"] is True
    assert "does not hold on this data" in v["sentences"]["h1"]
    assert v["per_layer"]["conv"]["h1"] is True  # other layers get their own verdicts


def test_n_bg_is_reported_but_not_required_for_h1():
    student = summary(20.0, 9.0, 0.83, 0.8, 0.6, 0.1, 0.7)  # more background points than the baseline
    v = hypothesis_verdicts({"fc1": layer(student, GOOD_B)}, "fc1")
    assert v["h1"] is True and "N_bg 9.00 vs 5.00" in v["sentences"]["h1"]


def test_missing_metrics_give_none_not_false():
    student = summary(20.0, 4.0, None, 0.8, None, 0.1, None)
    v = hypothesis_verdicts({"fc1": layer(student, GOOD_B)}, "fc1")
    assert v["h1"] is None and v["h2"] is None and v["h3"] is None
    assert all("could not be evaluated" in s for s in v["sentences"].values())
    assert "λ of the student" in v["sentences"]["h1"]
    no_dynamics = summary(20.0, 4.0, 0.83, 0.8, dynamics=False)  # too few epochs: no d_mean/d_var/rho keys
    v = hypothesis_verdicts({"fc1": layer(no_dynamics, GOOD_B)}, "fc1")
    assert v["h1"] is True and v["h2"] is None and v["h3"] is None
    assert hypothesis_verdicts({"conv": layer(GOOD_S, GOOD_B)}, "fc1")["h1"] is None  # layer not analysed


def test_markdown_table_bolds_the_better_value_and_dashes_missing():
    student = summary(20.0, 4.0, 0.83, 0.8, 0.6, None, 0.7)
    table = markdown_table({"fc1": layer(student, GOOD_B)})
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]] for line in table.splitlines()[2:]}
    assert rows["S"][0] == "**20.00**" and rows["B"][0] == "15.00"  # N_fg: higher is better
    assert rows["S"][1] == "**4.00**" and rows["B"][1] == "5.00"  # N_bg: lower is better
    assert rows["S"][3] == "**0.60**" and rows["B"][3] == "1.20"  # D_mean: lower is better
    assert rows["S"][4] == "–" and rows["B"][4] == "0.90"  # a missing value: "–", nothing bold
    assert rows["S"][6] == "**80.0%**" and rows["B"][6] == "70.0%"
    assert rows["T"][3:6] == ["–", "–", "–"] and "**" not in "".join(rows["T"])
    assert fmt(None) == "–" and fmt(float("nan")) == "–" and fmt(torch.tensor(1.234)) == "1.23"


def fake_data():
    g, n, size = 4, 3, 32
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    fg = torch.zeros(n, g, g, dtype=torch.bool)
    fg[:, 1:3, 1:3] = True

    def role_map():
        return {"entropy": torch.randn(n, g, g, generator=gen), "points": torch.rand(n, g, g, generator=gen) > 0.5,
                "foreground": fg}

    maps = {"images": torch.rand(n, 3, size, size, generator=gen), "masks": masks,
            "teacher": role_map(), "student": role_map(), "baseline": role_map()}
    conv_student = summary(12.0, None, None, 0.8, 2.0, 1.0, None)
    return {
        "title": "kdlens test report",
        "distilled_layer": "fc1",
        "settings": {"grid": g, "b": 0.2, "samples": n, "steps": 10, "model": {"name": "vgg11"}},
        "timing": {"train_s": 120.0, "analysis_s": 300.0, "checkpoints_analysed": 9, "samples": n},
        "layers": {"fc1": layer(GOOD_S, GOOD_B), "conv": layer(conv_student, GOOD_B)},
        "maps": {"fc1": maps, "conv": maps},
    }


def test_write_report_writes_every_file(tmp_path):
    out = tmp_path / "report"
    written = write_report(out, fake_data())
    for name in ("report.md", "report.html", "metrics.json"):
        assert written[name].is_file() and written[name].stat().st_size > 0
    pngs = sorted(p for p in (out / "figures").iterdir())
    assert len(pngs) == 8  # 4 figures x 2 layers
    assert {p.name for p in pngs} == {k.split("/")[1] for k in written if k.startswith("figures/")}
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_SIGNATURE and p.stat().st_size > 1000
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hypotheses"] == {"h1": True, "h2": True, "h3": True}
    assert metrics["per_layer_hypotheses"]["conv"] == {"h1": None, "h2": False, "h3": None}
    for name in ("fc1", "conv"):
        models = metrics["layers"][name]
        assert set(models) == {"teacher", "student", "baseline"}
        assert {"n_fg", "n_bg", "lambda", "accuracy", "per_epoch"} <= set(models["teacher"])
        for role in ("student", "baseline"):
            assert {"n_fg", "n_bg", "lambda", "accuracy", "d_mean", "d_var", "rho", "per_epoch"} <= set(models[role])
    assert metrics["layers"]["conv"]["student"]["lambda"] is None
    assert metrics["settings"]["grid"] == 4 and metrics["timing"]["train_s"] == 120.0

    md = (out / "report.md").read_text()
    assert md.startswith("# kdlens test report")
    assert "![" in md and "(figures/maps_fc1.png)" in md and "How to read this" in md
    assert "**20.00**" in md and "–" in md
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert 'src="figures/lambda_vs_accuracy_conv.png"' in page and "<b>20.00</b>" in page


def test_write_report_survives_missing_values_and_no_maps(tmp_path):
    empty = {"n_fg": None, "n_bg": None, "lambda": None, "accuracy": None, "epochs": [], "samples": 0, "per_epoch": []}
    data = {"title": None, "distilled_layer": "fc1", "settings": {}, "timing": {},
            "layers": {"fc1": {"teacher": None, "student": dict(empty), "baseline": dict(empty)}}}
    written = write_report(tmp_path, data)
    assert "figures/maps_fc1.png" not in written and "figures/metrics_fc1.png" in written
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["hypotheses"] == {"h1": None, "h2": None, "h3": None}
    assert metrics["layers"]["fc1"]["teacher"]["n_fg"] is None
