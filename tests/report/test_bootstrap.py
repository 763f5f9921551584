"""The paired bootstrap over images: cases with a known answer."""

import math

import numpy as np
import pytest

from kdlens.report.bootstrap import Interval, aggregate, metric_difference, paired_difference


def noisy(n=20, seed=1, loc=0.0, scale=1.0):
    return [float(x) for x in np.random.default_rng(seed).normal(loc, scale, size=n)]


def test_identical_models_give_zero_width_interval_at_zero():
    a = noisy()
    for statistic in ("mean", "variance"):
        iv = paired_difference(a, list(a), statistic)
        assert iv == Interval(0.0, 0.0, 0.0) and iv.contains(0.0)


def test_constant_shift_gives_the_shift_exactly():
    a = noisy()
    iv = paired_difference([x + 1 for x in a], a, "mean")
    assert iv.estimate == pytest.approx(1) and iv.low == pytest.approx(1) and iv.high == pytest.approx(1)
    iv = paired_difference([x + 1 for x in a], a, "variance")  # a shift does not change the variance
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)


def test_clearly_separated_pair_excludes_zero():
    iv = paired_difference(noisy(loc=5), noisy(seed=2), "mean")
    assert iv.low > 0 and iv.low <= iv.estimate <= iv.high
    iv = paired_difference(noisy(seed=2), noisy(loc=5), "mean")
    assert iv.high < 0


def test_noisy_small_difference_includes_zero():
    iv = paired_difference(noisy(loc=0.1, scale=3), noisy(seed=2, scale=3), "mean")
    assert iv.low < 0 < iv.high


def test_pairing_removes_the_shared_image_effect():
    # a large per-image effect shared by both models, a small consistent gain: paired, the gain is clear
    base = noisy(scale=10)
    gain = noisy(seed=3, loc=0.5, scale=0.1)
    iv = paired_difference([x + g for x, g in zip(base, gain)], base, "mean")
    assert iv.low > 0


def test_undefined_values_are_dropped_per_model():
    a = [1.0, None, 3.0, float("nan"), 5.0, float("inf")]
    b = [0.0, 2.0, None, 4.0, 0.0, 0.0]
    iv = paired_difference(a, b, "mean")
    assert iv.estimate == pytest.approx(3.0 - 1.2)
    assert aggregate(a, "variance") == pytest.approx(np.var([1.0, 3.0, 5.0]))  # population variance


def test_resamples_without_a_defined_value_are_skipped():
    # only one image defined for a: most resamples miss it and are skipped; the rest all give 5 - 1
    iv = paired_difference([None] * 9 + [5.0], [1.0] * 10, "mean", resamples=500)
    assert (iv.estimate, iv.low, iv.high) == (4.0, 4.0, 4.0)


def test_nothing_to_compute_gives_none():
    assert paired_difference([None, None], [1.0, 2.0], "mean") is None
    assert paired_difference([float("nan")], [1.0], "mean") is None
    assert paired_difference([], [], "mean") is None


def test_seeded_and_level_controls_the_width():
    a, b = noisy(loc=0.3), noisy(seed=2)
    assert paired_difference(a, b, "mean", seed=7) == paired_difference(a, b, "mean", seed=7)
    wide = paired_difference(a, b, "mean", level=0.99)
    narrow = paired_difference(a, b, "mean", level=0.5)
    assert wide.low < narrow.low and narrow.high < wide.high
    assert all(math.isfinite(v) for v in (wide.estimate, wide.low, wide.high))


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0], "mean")
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0], "median")
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0], "mean", level=1.0)
    with pytest.raises(ValueError):
        metric_difference({}, {}, "accuracy")


def test_metric_difference_maps_metrics_to_per_sample_fields():
    a = {"per_sample": {"n_fg": [3.0, 5.0], "ratio": [0.5, 0.7], "d": [1.0, 3.0], "rho": [0.2, None]}}
    b = {"per_sample": {"n_fg": [1.0, 1.0], "ratio": [0.5, 0.5], "d": [2.0, 2.0], "rho": [0.1, 0.1]}}
    assert metric_difference(a, b, "n_fg").estimate == pytest.approx(3.0)
    assert metric_difference(a, b, "lambda").estimate == pytest.approx(0.1)
    assert metric_difference(a, b, "d_mean").estimate == pytest.approx(0.0)
    assert metric_difference(a, b, "d_var").estimate == pytest.approx(1.0)  # var([1, 3]) - var([2, 2])
    assert metric_difference(a, b, "rho").estimate == pytest.approx(0.1)
    assert metric_difference(a, b, "n_bg") is None  # no such per-sample field
    assert metric_difference({"n_fg": 3.0}, b, "n_fg") is None  # old summaries: no per_sample
    assert metric_difference(None, b, "n_fg") is None
    short = {"per_sample": {"n_fg": [1.0]}}
    assert metric_difference(a, short, "n_fg") is None  # not aligned
