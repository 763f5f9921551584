"""The comparison tables and the claims checked on them."""

import pytest

from kdlens.compare.tables import (
    claims,
    error_stats,
    fmt_error,
    per_seed_table,
    rate_claims,
    rate_table,
    results_csv,
    table1,
    table4,
)


def row(error):
    return {"test_error": error, "train_error": error / 2, "test_accuracy": 1 - error / 100, "seconds": 60.0}


RESULTS = {
    "Student": {"0": row(10.0), "1": row(12.0)},
    "FT": {"0": row(9.0), "1": row(9.0)},
    "IE-FT": {"0": row(8.0), "1": row(9.0)},
}


def test_error_stats_mean_and_sample_std():
    stats = error_stats(RESULTS["Student"])
    assert stats["mean"] == 11.0
    assert stats["std"] == pytest.approx(2 ** 0.5)  # sqrt(((10-11)^2 + (12-11)^2) / (2-1))
    assert error_stats({"0": row(5.0)})["std"] is None
    assert fmt_error(stats) == "11.00 ± 1.41"


def test_table1_has_teacher_student_then_methods():
    summary = {t: error_stats(r) for t, r in RESULTS.items()}
    text = table1("vgg11 ×0.25", 7.5, "vgg11 ×0.125", summary)
    header, _, values = text.strip().splitlines()
    assert header == "| Teacher: vgg11 ×0.25 | Student: vgg11 ×0.125 | FT | IE-FT |"
    assert values == "| 7.50 | 11.00 ± 1.41 | 9.00 ± 0.00 | 8.50 ± 0.71 |"


def test_per_seed_table_and_csv_list_every_run():
    text = per_seed_table(RESULTS)
    assert "| IE-FT | 8.00 | 9.00 | 8.50 ± 0.71 |" in text
    lines = results_csv({"100%": RESULTS}).strip().splitlines()
    assert lines[0] == "rate,method,seed,test_error,train_error,test_accuracy,seconds"
    assert len(lines) == 1 + 6 and lines[1].startswith("100%,")


def test_claims_are_decided_on_paired_seed_intervals():
    # IE-FT vs FT: differences (FT - IE-FT) per seed 1, 0: mean 0.5, sd 0.7071, n 2,
    # half width t(0.975, 1) * 0.7071 / sqrt(2) = 12.706 * 0.5 = 6.353 -> [-5.85, 6.85]: inconclusive
    checks = {c["claim"]: c for c in claims(RESULTS, "Student", [("IE-FT", "FT")])}
    ie = checks["IE-FT beats FT"]
    assert ie["gap"] == pytest.approx(0.5) and ie["verdict"] == "inconclusive"
    assert ie["low"] == pytest.approx(0.5 - 6.3531, abs=1e-3) and ie["high"] == pytest.approx(0.5 + 6.3531, abs=1e-3)
    # FT vs Student: differences 1, 3: mean 2, sd 1.414 -> half 12.706 -> inconclusive, though FT's mean is lower
    assert checks["FT beats the independent student"]["verdict"] == "inconclusive"
    # three seeds with a steady gain: differences 2, 2.5, 3: mean 2.5, sd 0.5,
    # half 4.3027 * 0.5 / sqrt(3) = 1.2421 -> [1.26, 3.74]: yes; reversed: no
    three = {"Student": {"0": row(10.0), "1": row(12.0), "2": row(11.0)},
             "KD": {"0": row(8.0), "1": row(9.5), "2": row(8.0)}}
    kd = claims(three, "Student")[0]
    assert kd["verdict"] == "yes" and kd["low"] == pytest.approx(2.5 - 1.2421, abs=1e-3)
    flipped = claims({"Student": three["KD"], "KD": three["Student"]}, "Student")[0]
    assert flipped["verdict"] == "no" and flipped["high"] == pytest.approx(-2.5 + 1.2421, abs=1e-3)
    # one shared seed: no interval; none shared: not measured
    one = claims({"Student": {"0": row(10.0)}, "KD": {"0": row(5.0), "1": row(5.0)}}, "Student")[0]
    assert one["verdict"] == "inconclusive" and one["low"] is None and one["gap"] == 5.0
    assert claims({"Student": {"0": row(10.0)}, "KD": {"1": row(5.0)}}, "Student")[0]["verdict"] is None


def test_table4_lists_both_networks_per_mode():
    mutual = {"Independent": {"net1": error_stats(RESULTS["Student"]), "net2": error_stats(RESULTS["FT"])},
              "IE-DML": {"net1": error_stats(RESULTS["IE-FT"]), "net2": error_stats(RESULTS["FT"])}}
    text = table4("a", "b", mutual)
    assert "Independent Net 1 | Independent Net 2 | IE-DML Net 1 | IE-DML Net 2" in text
    assert "| a | b | 11.00 ± 1.41 | 9.00 ± 0.00 | 8.50 ± 0.71 | 9.00 ± 0.00 |" in text


BY_RATE = {
    "100%": {"Student": {"0": row(10.0), "1": row(12.0)}, "KD": {"0": row(9.0)}, "IEP": {"0": row(8.0), "1": row(9.0)}},
    "25%": {"Student": {"0": row(30.0), "1": row(34.0)}, "KD": {"0": row(25.0)}, "IEP": {"0": row(26.0), "1": row(27.0)}},
}


def test_rate_table_gives_accuracy_per_rate_and_method():
    lines = rate_table(BY_RATE).strip().splitlines()
    assert lines[0] == "| Rate | Student | KD | IEP |"
    assert lines[2] == "| 100% | 89.00 ± 1.41 | 91.00 | 91.50 ± 0.71 |"
    assert lines[3] == "| 25% | 68.00 ± 2.83 | 75.00 | 73.50 ± 0.71 |"
    csv_lines = results_csv(BY_RATE).strip().splitlines()
    assert len(csv_lines) == 1 + 10 and csv_lines[-1].startswith("25%,IEP,1,")


def test_rate_claims():
    checks = {c["claim"]: c for c in rate_claims(BY_RATE, "IEP", "Student")}
    top = checks["IEP is the most accurate at 100% (best other: KD)"]
    assert top["holds"] is True and top["gap"] == pytest.approx(0.5)
    # paired over the one seed both ran (KD has seed 0 only): 9 - 8 = 1 point, no interval
    assert top["paired"]["gap"] == pytest.approx(1.0) and top["paired"]["verdict"] == "inconclusive"
    low = checks["IEP is the most accurate at 25% (best other: KD)"]
    assert low["holds"] is False and low["gap"] == pytest.approx(-1.5)
    growing = checks["IEP's gain over Student grows as the rate falls"]
    # gains: 91.5 - 89 = 2.5 at 100 %, 73.5 - 68 = 5.5 at 25 %
    assert growing["holds"] is True and growing["gains"] == {"25%": pytest.approx(5.5), "100%": pytest.approx(2.5)}
    assert rate_claims({"100%": {"Student": BY_RATE["100%"]["Student"]}}, "IEP", "Student")[0]["holds"] is None
    rivals_only = rate_claims(BY_RATE, "IEP", "Student", rivals=["Student"])
    assert rivals_only[1]["claim"] == "IEP is the most accurate at 25% (best other: Student)" and rivals_only[1]["holds"]
