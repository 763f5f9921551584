"""The Student t quantile and the paired seed interval against printed tables and by hand."""

import math

import pytest

from kdlens.compare.seed_interval import interval_text, paired_seed_interval, t_quantile

# Two-sided 95 % and one-sided 95 % critical values from a printed t table
# (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2).
TABLE_0975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 30: 2.042}
TABLE_095 = {1: 6.314, 2: 2.920, 5: 2.015, 20: 1.725}


@pytest.mark.parametrize("df,value", sorted(TABLE_0975.items()))
def test_t_quantile_0975_matches_the_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=1.5e-3)


@pytest.mark.parametrize("df,value", sorted(TABLE_095.items()))
def test_t_quantile_095_matches_the_table(df, value):
    assert t_quantile(0.95, df) == pytest.approx(value, abs=1.5e-3)


def test_t_quantile_tends_to_the_normal_and_rejects_bad_input():
    assert t_quantile(0.975, 5000) == pytest.approx(1.95996, abs=2e-3)
    for p, df in ((0.5, 3), (1.0, 3), (0.975, 0), (0.975, 2.5)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_paired_interval_by_hand():
    # errors: worse 10, 12, 11; better 9, 10, 8 -> differences 1, 2, 3, mean 2, sd 1,
    # half = 4.3027 / sqrt(3) = 2.4842 -> [-0.48, 4.48]: inconclusive
    worse = {"0": {"test_error": 10.0}, "1": {"test_error": 12.0}, "2": {"test_error": 11.0}}
    better = {"0": {"test_error": 9.0}, "1": {"test_error": 10.0}, "2": {"test_error": 8.0}}
    check = paired_seed_interval(better, worse)
    half = 4.30265 / math.sqrt(3)
    assert check["gap"] == pytest.approx(2.0)
    assert (check["low"], check["high"]) == pytest.approx((2 - half, 2 + half), abs=1e-3)
    assert check["verdict"] == "inconclusive" and check["seeds"] == 3
    assert interval_text(check) == "+2.00 error points [-0.48, +4.48], 3 seeds"
    # the same mean gain with no spread is decided; the pairing matters: unpaired,
    # these errors (sd 1 and 1) would overlap, paired the differences are all 2
    steady = {s: {"test_error": r["test_error"] - 2.0} for s, r in worse.items()}
    assert paired_seed_interval(steady, worse)["verdict"] == "yes"
    assert paired_seed_interval(worse, steady)["verdict"] == "no"
