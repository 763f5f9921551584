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


def test_claims_compare_ie_with_its_base_and_everything_with_the_baseline():
    summary = {t: error_stats(r) for t, r in RESULTS.items()}
    checks = {c["claim"]: c for c in claims(summary, "Student", [("IE-FT", "FT")])}
    assert checks["IE-FT beats FT"]["holds"] is True
    assert checks["IE-FT beats FT"]["gap"] == pytest.approx(0.5)
    assert checks["IE-FT beats FT"]["within_noise"] is True  # 0.5 < std 0.71
    assert checks["FT beats the independent student"]["holds"] is True
    worse = {**summary, "IE-FT": error_stats({"0": row(20.0)})}
    assert {c["claim"]: c for c in claims(worse, "Student", [("IE-FT", "FT")])}["IE-FT beats FT"]["holds"] is False


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
    low = checks["IEP is the most accurate at 25% (best other: KD)"]
    assert low["holds"] is False and low["gap"] == pytest.approx(-1.5)
    growing = checks["IEP's gain over Student grows as the rate falls"]
    # gains: 91.5 - 89 = 2.5 at 100 %, 73.5 - 68 = 5.5 at 25 %
    assert growing["holds"] is True and growing["gains"] == {"25%": pytest.approx(5.5), "100%": pytest.approx(2.5)}
    assert rate_claims({"100%": {"Student": BY_RATE["100%"]["Student"]}}, "IEP", "Student")[0]["holds"] is None
    rivals_only = rate_claims(BY_RATE, "IEP", "Student", rivals=["Student"])
    assert rivals_only[1]["claim"] == "IEP is the most accurate at 25% (best other: Student)" and rivals_only[1]["holds"]
