"""Paired confidence intervals over seeds: does method X beat method Y?

In a comparison every method of a seed starts from the same student weights
and sees the same batches, so the natural unit of evidence is the paired
difference d_s = error_Y(s) - error_X(s) over the seeds s both ran. Its
two-sided interval at level 1 - a is the Student t interval

    mean(d) ± t_{1 - a/2, n - 1} · sd(d) / sqrt(n)

(sd with n - 1). "X beats Y" is **yes** when the whole interval lies above
0, **no** when it lies below 0 and **inconclusive** otherwise, or with one
seed (no interval). With 3 seeds t_{0.975, 2} = 4.30: only a difference that
is large against its seed-to-seed spread is called.

The t quantile is computed here (no SciPy): the Student t density is
integrated by Simpson's rule on a substitution that makes the tail finite,
and the quantile found by bisection; tested against printed tables.
"""

from __future__ import annotations

import math
import statistics
from functools import lru_cache
from typing import Any, Mapping

YES, NO, INCONCLUSIVE = "yes", "no", "inconclusive"
LEVEL = 0.95


def _t_density(x: float, df: int) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def _upper_tail(x: float, df: int, panels: int = 400) -> float:
    """P(T > x) for x >= 0: the integral of the density over [x, inf), written with
    u = 1 / (1 + t - x) over u in (0, 1] (dt = du / u^2), by Simpson's rule."""
    def g(u: float) -> float:
        if u <= 0.0:
            return 0.0  # the density falls as t^-(df+1), faster than 1/u^2 = t^2 grows, for df >= 2
        t = x + 1.0 / u - 1.0
        return _t_density(t, df) / (u * u)

    if df == 1:  # Cauchy: closed form
        return 0.5 - math.atan(x) / math.pi
    h = 1.0 / panels
    total = g(0.0) + g(1.0)
    for k in range(1, panels):
        total += (4 if k % 2 else 2) * g(k * h)
    return total * h / 3


@lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """The p quantile (0.5 < p < 1) of Student's t with ``df`` >= 1 degrees of freedom."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"p = {p!r}: expected 0.5 < p < 1")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df = {df!r}: expected an integer >= 1")
    low, high = 0.0, 1.0
    while _upper_tail(high, df) > 1 - p:
        high *= 2
    for _ in range(40):
        mid = (low + high) / 2
        if _upper_tail(mid, df) > 1 - p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def paired_seed_interval(better: Mapping[str, Mapping[str, Any]], worse: Mapping[str, Mapping[str, Any]],
                         key: str = "test_error", level: float = LEVEL) -> dict[str, Any]:
    """Whether ``better`` has a lower ``key`` than ``worse`` (each ``{seed: row}``),
    paired over the seeds both have: ``{"gap", "low", "high", "seeds", "verdict"}``
    with gap = mean(worse - better) (error points saved), [low, high] its
    interval (None with fewer than two seeds) and the verdict yes / no /
    inconclusive; gap None and verdict None when no seed is shared."""
    shared = [s for s in better if s in worse and better[s].get(key) is not None and worse[s].get(key) is not None]
    differences = [float(worse[s][key]) - float(better[s][key]) for s in shared]
    if not differences:
        return {"gap": None, "low": None, "high": None, "seeds": 0, "verdict": None}
    gap = statistics.fmean(differences)
    n = len(differences)
    if n < 2:
        return {"gap": gap, "low": None, "high": None, "seeds": 1, "verdict": INCONCLUSIVE}
    half = t_quantile((1 + level) / 2, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    low, high = gap - half, gap + half
    verdict = YES if low > 0 else NO if high < 0 else INCONCLUSIVE
    return {"gap": gap, "low": low, "high": high, "seeds": n, "verdict": verdict}


def interval_text(check: Mapping[str, Any], unit: str = "error points") -> str:
    """"+1.20 error points [0.40, 2.00], 3 seeds" (or "1 seed: no interval")."""
    if check.get("gap") is None:
        return "not measured"
    if check.get("low") is None:
        return f"{check['gap']:+.2f} {unit}, 1 seed: no interval"
    return f"{check['gap']:+.2f} {unit} [{check['low']:+.2f}, {check['high']:+.2f}], {check['seeds']} seeds"

