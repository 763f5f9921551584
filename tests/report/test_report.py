"""The report: Table 5 comparison per estimator, bootstrap verdicts, teacher vs random, the written files."""

import json

import numpy as np
import torch

from kdlens.report import hypothesis_verdicts, teacher_vs_random, write_report
from kdlens.report.bootstrap import aggregate
from kdlens.report.figures import _accuracy_series
from kdlens.report.tables import (
    FAILS, HOLDS, INCONCLUSIVE, NOT_EVALUATED, combine, fmt, fmt_interval, fmt_signed, markdown_table,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N = 12
FAST = {"resamples": 300}  # fewer resamples keep the tests fast; the verdicts below are far from the edges


def draws(loc, scale, seed):
    return [float(x) for x in np.random.default_rng(seed).normal(loc, scale, size=N)]


def summary(n_fg, n_bg, ratio, acc, d=None, rho=None, *, dynamics=True, epochs=(0, 1, 2), mimic=False):
    """A summary whose point values are the aggregates of its per-sample values, as the producer makes them."""
    per_sample = {"n_fg": n_fg, "n_bg": n_bg, "ratio": ratio}
    out = {"n_fg": aggregate(n_fg, "mean"), "n_bg": aggregate(n_bg, "mean"), "lambda": aggregate(ratio, "mean"),
           "accuracy": acc, "epochs": list(epochs), "samples": N}
    out["per_epoch"] = [
        {"epoch": e, "n_fg": out["n_fg"] * (k + 1) / len(epochs), "n_bg": out["n_bg"], "lambda": out["lambda"],
         "test_accuracy": acc * (k + 1) / len(epochs), "weight_distance": 0.5 * k,
         **({"mimic_accuracy": 0.5 * acc} if mimic and k == 0 else {})}
        for k, e in enumerate(epochs)
    ]
    if dynamics:
        per_sample.update(d=d, rho=rho)
        out.update(d_mean=aggregate(d, "mean"), d_var=aggregate(d, "variance"), rho=aggregate(rho, "mean"))
    out["per_sample"] = per_sample
    return out


def model(fg, bg, ratio, acc, d=None, rho=None, seed=0, d_spread=0.1, **kw):
    """Per-sample values drawn around the given means (small noise; D(x) spread by ``d_spread``)."""
    return summary(draws(fg, 1.0, seed), draws(bg, 0.5, seed + 1), draws(ratio, 0.03, seed + 2), acc,
                   None if d is None else draws(d, d_spread, seed + 3),
                   None if rho is None else draws(rho, 0.03, seed + 4), **kw)


TEACHER = model(30.0, 5.0, 0.86, 0.9, dynamics=False, seed=10)
RANDOM = model(8.0, 7.0, 0.5, 0.1, dynamics=False, seed=20)
GOOD_S = model(20.0, 4.0, 0.83, 0.8, 0.6, 0.7, seed=30, mimic=True)
GOOD_B = model(15.0, 5.0, 0.75, 0.7, 1.2, 0.5, seed=40, d_spread=0.9)


def roles(student, baseline, **extra):
    return {"teacher": TEACHER, "student": student, "baseline": baseline, **extra}


def verdicts(layers, distilled="fc1", estimators=None):
    return hypothesis_verdicts(layers, distilled, estimators, bootstrap=FAST)


def test_clearly_separated_models_hold():
    v = verdicts({"fc1": {"converged": roles(GOOD_S, GOOD_B)}})
    assert (v["h1"], v["h2"], v["h3"]) == (HOLDS, HOLDS, HOLDS) and v["primary"] == "converged"
    h1 = v["by_estimator"]["converged"]["h1"]
    n_fg = h1["metrics"]["n_fg"]
    assert n_fg["low"] > 0 and n_fg["verdict"] == HOLDS and set(h1["metrics"]) == {"n_fg", "lambda"}
    assert n_fg["difference"] == n_fg["student"] - n_fg["baseline"]
    sentence = v["sentences"]["h1"]
    assert sentence.startswith("Hypothesis 1 (KD makes the network encode more knowledge points) holds at fc1 "
                               "(converged; 95 % intervals): N_fg S − B = +")
    assert fmt_interval(n_fg["low"], n_fg["high"]) in sentence and fmt(n_fg["student"]) in sentence
    d_mean = v["by_estimator"]["converged"]["h2"]["metrics"]["d_mean"]
    assert d_mean["high"] < 0 and d_mean["verdict"] == HOLDS  # lower is better


def test_difference_inside_the_noise_is_inconclusive():
    base = draws(15.0, 4.0, 50)
    student = summary([b + n for b, n in zip(base, draws(0.2, 3.0, 52))],  # a small gain, large per-image noise
                      GOOD_S["per_sample"]["n_bg"], GOOD_S["per_sample"]["ratio"], 0.8,
                      GOOD_S["per_sample"]["d"], GOOD_S["per_sample"]["rho"])
    baseline = summary(base, GOOD_B["per_sample"]["n_bg"], GOOD_B["per_sample"]["ratio"], 0.7,
                       GOOD_B["per_sample"]["d"], GOOD_B["per_sample"]["rho"])
    v = verdicts({"fc1": {"converged": roles(student, baseline)}})
    n_fg = v["by_estimator"]["converged"]["h1"]["metrics"]["n_fg"]
    assert n_fg["low"] < 0 < n_fg["high"] and n_fg["verdict"] == INCONCLUSIVE
    assert v["by_estimator"]["converged"]["h1"]["metrics"]["lambda"]["verdict"] == HOLDS
    assert v["h1"] == INCONCLUSIVE and v["h2"] == HOLDS  # one inconclusive metric makes H1 inconclusive
    assert v["sentences"]["h1"].startswith("Hypothesis 1 (KD makes the network encode more knowledge points) "
                                           "inconclusive at fc1")
    # identical models: the interval is [0, 0], which contains 0
    same = verdicts({"fc1": {"converged": roles(GOOD_B, GOOD_B)}})
    assert (same["h1"], same["h2"], same["h3"]) == (INCONCLUSIVE,) * 3
    assert "+0.00" not in same["sentences"]["h1"] and "= 0.00 [0.00, 0.00]" in same["sentences"]["h1"]


def test_clearly_worse_does_not_hold_and_each_layer_is_judged_alone():
    worse = model(10.0, 4.0, 0.83, 0.8, 0.6, 0.7, seed=60)
    v = verdicts({"fc1": {"converged": roles(worse, GOOD_B)}, "conv": {"converged": roles(GOOD_S, GOOD_B)}})
    assert (v["h1"], v["h2"], v["h3"]) == (FAILS, HOLDS, HOLDS)
    assert " does not hold at fc1" in v["sentences"]["h1"] and "does not hold)" in v["sentences"]["h1"]
    assert v["per_layer"]["conv"]["converged"]["h1"]["verdict"] == HOLDS


def test_n_bg_is_reported_but_not_required_for_h1():
    student = model(20.0, 9.0, 0.83, 0.8, 0.6, 0.7, seed=30)  # more background points than the baseline
    v = verdicts({"fc1": {"converged": roles(student, GOOD_B)}})
    assert v["h1"] == HOLDS and "Reported, not required: N_bg S − B = +" in v["sentences"]["h1"]
    assert v["per_layer"]["fc1"]["converged"]["comparisons"]["n_bg"]["verdict"] == FAILS


def test_missing_values_and_old_summaries_are_not_evaluated():
    old = {k: v for k, v in GOOD_S.items() if k != "per_sample"}  # a summary from before per_sample
    v = verdicts({"fc1": {"converged": roles(old, GOOD_B)}})
    assert (v["h1"], v["h2"], v["h3"]) == (NOT_EVALUATED,) * 3
    n_fg = v["by_estimator"]["converged"]["h1"]["metrics"]["n_fg"]
    assert n_fg["low"] is None and n_fg["difference"] == n_fg["student"] - n_fg["baseline"]
    assert fmt(n_fg["student"]) in v["sentences"]["h1"] and "no per-sample values" in v["sentences"]["h1"]

    no_dynamics = model(20.0, 4.0, 0.83, 0.8, dynamics=False, seed=30)  # too few epochs: no d / rho
    v = verdicts({"fc1": {"converged": roles(no_dynamics, GOOD_B)}})
    assert v["h1"] == HOLDS and v["h2"] == NOT_EVALUATED and v["h3"] == NOT_EVALUATED
    assert "missing: D_mean of the student" in v["sentences"]["h2"]

    v = verdicts({"conv": {"converged": roles(GOOD_S, GOOD_B)}})  # the distilled layer was not analysed
    assert v["h1"] == NOT_EVALUATED and "layer fc1 was not analysed" in v["sentences"]["h1"]
    assert combine([FAILS, NOT_EVALUATED]) == FAILS and combine([HOLDS, NOT_EVALUATED]) == NOT_EVALUATED
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE and combine([]) == NOT_EVALUATED


def test_two_estimators_are_judged_side_by_side():
    worse = model(10.0, 4.0, 0.83, 0.8, 0.6, 0.7, seed=60)
    layers = {"fc1": {"converged": roles(GOOD_S, GOOD_B), "paper": roles(worse, GOOD_B)}}
    v = verdicts(layers, estimators=["converged", "paper"])
    assert v["primary"] == "converged" and v["h1"] == HOLDS
    assert v["by_estimator"]["paper"]["h1"]["verdict"] == FAILS
    assert v["agreement"] == {"paper": {"h1": False, "h2": True, "h3": True}}
    assert v["agreement_sentences"] == ["The paper estimator agrees with the primary (converged) on H2, H3 but "
                                        "disagrees on H1 (does not hold vs holds)."]
    assert verdicts(layers, estimators=["paper", "converged"])["h1"] == FAILS  # the first is the primary


def test_teacher_vs_random():
    v = teacher_vs_random(roles(GOOD_S, GOOD_B, random=RANDOM), "fc1", "converged", FAST)
    assert v["n_fg"]["verdict"] == "more" and v["n_fg"]["low"] > 0 and v["lambda"]["verdict"] == "higher"
    assert v["sentence"].startswith("At fc1 (converged) the teacher has more foreground knowledge points than its "
                                    f"random initial weights (N_fg T {fmt(TEACHER['n_fg'])} vs R "
                                    f"{fmt(RANDOM['n_fg'])}, T − R = +")
    v = teacher_vs_random(roles(GOOD_S, GOOD_B, random=TEACHER), "fc1", "converged", FAST)
    assert v["n_fg"]["verdict"] == INCONCLUSIVE and "inconclusive" in v["sentence"]
    v = teacher_vs_random(roles(GOOD_S, GOOD_B), "fc1", "converged", FAST)
    assert v["n_fg"]["verdict"] == NOT_EVALUATED and "no random-weights model" in v["sentence"]


def test_markdown_table_bolds_the_better_value_and_shows_the_interval():
    student = dict(GOOD_S, d_var=None)
    comparisons = verdicts({"fc1": {"converged": roles(GOOD_S, GOOD_B)}})["per_layer"]["fc1"]
    table = markdown_table({"converged": roles(student, GOOD_B, random=RANDOM), "paper": roles(GOOD_S, GOOD_B)},
                           {est: c["comparisons"] for est, c in comparisons.items()})
    lines = table.splitlines()[2:]
    rows = {(line.split("|")[2].strip()): [c.strip() for c in line.split("|")[3:-1]] for line in lines[:5]}
    assert [line.split("|")[1].strip() for line in lines] == ["converged", "", "", "", "", "paper", "", "", ""]
    assert list(rows) == ["T", "S", "B", "R", "S − B"]
    assert rows["S"][0] == f"**{fmt(GOOD_S['n_fg'])}**" and rows["B"][0] == fmt(GOOD_B["n_fg"])  # higher is better
    assert rows["S"][1].startswith("**") and not rows["B"][1].startswith("**")  # N_bg: lower is better
    assert rows["S"][3].startswith("**")  # D_mean: lower is better
    assert rows["S"][4] == "–" and not rows["B"][4].startswith("**")  # a missing value: "–", nothing bold
    assert rows["S"][6] == "**80.0%**" and rows["B"][6] == "70.0%"
    assert rows["T"][3:6] == ["–", "–", "–"] and rows["R"][3:6] == ["–", "–", "–"]
    assert "**" not in "".join(rows["T"] + rows["R"])
    assert rows["S − B"][0].startswith("+") and "[" in rows["S − B"][0] and rows["S − B"][6] == "–"
    assert fmt(None) == "–" and fmt(float("nan")) == "–" and fmt(torch.tensor(1.234)) == "1.23"
    assert fmt_signed(-0.5) == "−0.50" and fmt_signed(0.0) == "0.00" and fmt_interval(-0.8, 3.1) == "[−0.80, 3.10]"


def test_student_accuracy_is_read_through_the_teacher_during_distillation():
    xs, _, epochs, through = _accuracy_series(GOOD_S["per_epoch"], mimic=True)
    assert epochs == [0, 1, 2] and through == [True, False, False] and xs[0] == 0.4
    assert _accuracy_series(GOOD_S["per_epoch"], mimic=False)[3] == [False, False, False]


def fake_data():
    g, size = 4, 32
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(N, size, size, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    fg = torch.zeros(N, g, g, dtype=torch.bool)
    fg[:, 1:3, 1:3] = True

    def role_map():
        return {"entropy": torch.randn(N, g, g, generator=gen), "points": torch.rand(N, g, g, generator=gen) > 0.5,
                "foreground": fg}

    def estimator_maps():
        return {role: role_map() for role in ("teacher", "student", "baseline", "random")}

    worse = model(10.0, 4.0, 0.83, 0.8, 0.6, 0.7, seed=60)
    conv_student = model(18.0, 5.0, 0.82, 0.8, 0.6, 0.4, seed=70)
    conv_student.update(n_bg=None, d_var=None)
    return {
        "title": "kdlens test report",
        "distilled_layer": "fc1",
        "estimators": ["converged", "paper"],
        "settings": {"grid": g, "b": 0.2, "samples": N, "steps": 10, "model": {"name": "vgg11"}},
        "timing": {"train_s": 120.0, "analysis_s": 300.0, "checkpoints_analysed": 9, "samples": N},
        "layers": {
            "fc1": {"converged": roles(GOOD_S, GOOD_B, random=RANDOM), "paper": roles(worse, GOOD_B, random=RANDOM)},
            "conv": {"converged": roles(conv_student, GOOD_B, random=RANDOM), "paper": roles(GOOD_S, GOOD_B)},
        },
        "maps": {"fc1": {"images": torch.rand(N, 3, size, size, generator=gen), "masks": masks,
                         "converged": estimator_maps(), "paper": estimator_maps()}},
    }


def test_write_report_with_two_estimators(tmp_path):
    out = tmp_path / "report"
    written = write_report(out, fake_data(), bootstrap=FAST)
    for name in ("report.md", "report.html", "metrics.json"):
        assert written[name].is_file() and written[name].stat().st_size > 0
    pngs = {p.name for p in (out / "figures").iterdir()}
    # maps for fc1 only; the three other figures for both layers; each for both estimators
    assert pngs == {f"{stem}_{layer}_{est}.png" for est in ("converged", "paper")
                    for stem, layer in [("maps", "fc1")] + [(s, l) for s in ("points_vs_distance",
                                                                             "lambda_vs_accuracy", "metrics")
                                                            for l in ("fc1", "conv")]}
    assert pngs == {k.split("/")[1] for k in written if k.startswith("figures/")}
    for name in pngs:
        data = (out / "figures" / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["estimators"] == ["converged", "paper"] and metrics["bootstrap"]["resamples"] == 300
    assert set(metrics["hypotheses"]) == {"primary", "converged", "paper"}
    assert metrics["hypotheses"]["primary"] == "converged"
    assert {h: r["verdict"] for h, r in metrics["hypotheses"]["converged"].items()} == {"h1": HOLDS, "h2": HOLDS,
                                                                                       "h3": HOLDS}
    assert metrics["hypotheses"]["paper"]["h1"]["verdict"] == FAILS
    n_fg = metrics["hypotheses"]["converged"]["h1"]["metrics"]["n_fg"]
    assert set(n_fg) == {"student", "baseline", "difference", "low", "high", "verdict"} and n_fg["low"] > 0
    assert metrics["estimators_agree"] == {"paper": {"h1": False, "h2": True, "h3": True}}
    assert metrics["per_layer_hypotheses"]["conv"]["converged"] == {"h1": HOLDS, "h2": NOT_EVALUATED, "h3": FAILS}
    assert metrics["comparisons"]["conv"]["converged"]["n_bg"]["verdict"] == NOT_EVALUATED
    assert set(metrics["teacher_vs_random"]["fc1"]) == {"converged", "paper"}
    assert metrics["teacher_vs_random"]["fc1"]["converged"]["n_fg"]["verdict"] == "more"
    assert metrics["teacher_vs_random"]["conv"]["paper"]["n_fg"]["verdict"] == NOT_EVALUATED
    for layer in ("fc1", "conv"):
        for est in ("converged", "paper"):
            models = metrics["layers"][layer][est]
            assert {"teacher", "student", "baseline"} <= set(models)
            assert {"n_fg", "n_bg", "lambda", "accuracy", "per_epoch", "per_sample"} <= set(models["teacher"])
            for role in ("student", "baseline"):
                assert {"n_fg", "lambda", "d_mean", "d_var", "rho", "per_sample"} <= set(models[role])
    assert set(metrics["layers"]["fc1"]["converged"]) == {"teacher", "student", "baseline", "random"}
    assert len(metrics["layers"]["fc1"]["paper"]["student"]["per_sample"]["ratio"]) == N
    assert metrics["layers"]["conv"]["converged"]["student"]["n_bg"] is None
    assert metrics["settings"]["grid"] == 4 and metrics["timing"]["train_s"] == 120.0

    md = (out / "report.md").read_text()
    assert md.startswith("# kdlens test report")
    assert "(figures/maps_fc1_converged.png)" in md and "(figures/metrics_conv_paper.png)" in md
    assert "## Teacher vs random weights" in md and "How to read this" in md
    assert "The paper estimator agrees with the primary (converged) on H2, H3 but disagrees on H1" in md
    assert "| Layer | H1 (converged) | H1 (paper) | H2 (converged) |" in md
    assert f"**{fmt(GOOD_S['n_fg'])}**" in md and "| S − B |" in md and "| R |" in md
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert 'src="figures/lambda_vs_accuracy_conv_paper.png"' in page and f"<b>{fmt(GOOD_S['n_fg'])}</b>" in page
    assert '<tr class="row-R">' in page and '<tr class="row-diff">' in page


def test_write_report_survives_missing_values_and_no_maps(tmp_path):
    empty = {"n_fg": None, "n_bg": None, "lambda": None, "accuracy": None, "epochs": [], "samples": 0, "per_epoch": [],
             "per_sample": {"n_fg": [], "n_bg": [], "ratio": []}}
    data = {"title": None, "distilled_layer": "fc1", "settings": {}, "timing": {}, "estimators": ["converged"],
            "layers": {"fc1": {"converged": {"teacher": None, "student": dict(empty), "baseline": dict(empty)}}}}
    written = write_report(tmp_path, data, bootstrap=FAST)
    assert "figures/maps_fc1_converged.png" not in written and "figures/metrics_fc1_converged.png" in written
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {h: r["verdict"] for h, r in metrics["hypotheses"]["converged"].items()} == {
        "h1": NOT_EVALUATED, "h2": NOT_EVALUATED, "h3": NOT_EVALUATED}
    assert metrics["layers"]["fc1"]["converged"]["teacher"]["n_fg"] is None
    assert metrics["teacher_vs_random"]["fc1"]["converged"]["n_fg"]["verdict"] == NOT_EVALUATED
