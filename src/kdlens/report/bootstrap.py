"""Paired bootstrap confidence intervals over the analysed images.

Every metric of Table 5 is an aggregate over images of a per-image value
(``summary["per_sample"]``, the same images in the same order for every model
and estimator), so the uncertainty of a difference between two models comes
from which images were analysed.  :func:`paired_difference` resamples image
positions with replacement, applies the same positions to both models (the
pairing: an image that is hard for one model is usually hard for the other),
drops the images that are undefined (None) for each model separately, and
takes the percentile interval of the resampled differences.

Pure functions on plain lists; nothing non-finite is ever returned: where a
result cannot be computed the answer is None.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

STATISTICS = ("mean", "variance")

# Table 5 metric -> (field of summary["per_sample"], statistic over the defined images).
# D_var is the population variance (divide by the count), as in Eq. 8.
METRIC_FIELDS: dict[str, tuple[str, str]] = {
    "n_fg": ("n_fg", "mean"),
    "n_bg": ("n_bg", "mean"),
    "lambda": ("ratio", "mean"),
    "d_mean": ("d", "mean"),
    "d_var": ("d", "variance"),
    "rho": ("rho", "mean"),
}

# A resample matrix is drawn in chunks of at most this many cells, so that
# thousands of resamples of thousands of images stay small in memory.
_CHUNK_CELLS = 1 << 20


@dataclass(frozen=True)
class Interval:
    """A point estimate of a difference and its bootstrap percentile interval [low, high]."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float = 0.0) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict:
        return asdict(self)


def number(value: Any) -> Optional[float]:
    """A plain finite float, or None for missing / non-numeric / NaN / inf
    (tensors and numpy scalars accepted; a tensor of several elements is no number)."""
    if value is None or isinstance(value, bool):
        return None
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _values(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(values with 0 where undefined, defined mask) as float64 / bool arrays."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    clean = [number(v) for v in values]
    defined = np.array([v is not None for v in clean], dtype=bool)
    return np.array([0.0 if v is None else v for v in clean], dtype=np.float64), defined


def aggregate(values: Sequence[Any], statistic: str) -> Optional[float]:
    """``statistic`` ("mean" or "variance", population) of the defined values; None if there are none."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    x, defined = _values(values)
    if not defined.any():
        return None
    x = x[defined]
    result = float(x.mean()) if statistic == "mean" else float(x.var())
    return result if math.isfinite(result) else None


def _resampled(x: np.ndarray, defined: np.ndarray, idx: np.ndarray, statistic: str) -> tuple[np.ndarray, np.ndarray]:
    """The statistic of each resample (rows of ``idx``) and whether the resample had any defined value."""
    w = defined[idx].astype(np.float64)
    v = x[idx] * w
    count = w.sum(axis=1)
    ok = count > 0
    safe = np.where(ok, count, 1.0)
    mean = v.sum(axis=1) / safe
    if statistic == "mean":
        return mean, ok
    centred = (x[idx] - mean[:, None]) * w
    return (centred * centred).sum(axis=1) / safe, ok


def _difference(sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """``sa - sb`` with differences at the level of floating-point rounding of
    the two statistics set to exactly 0, so that equal models never look
    "clearly different" by 1e-16."""
    diff = sa - sb
    noise = 64 * np.finfo(np.float64).eps * (np.abs(sa) + np.abs(sb))
    return np.where(np.abs(diff) <= noise, 0.0, diff)


def paired_difference(
    a: Sequence[Any],
    b: Sequence[Any],
    statistic: str,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Optional[Interval]:
    """Paired bootstrap interval of ``statistic(a) - statistic(b)``.

    ``a`` and ``b`` are per-image values of two models on the same images in the
    same order (None, NaN or inf: undefined for that model).  The estimate is
    the difference on all images; each of ``resamples`` resamples draws image
    positions with replacement (``numpy.random.default_rng(seed)``), applies
    them to both models and drops each model's undefined values; a resample in
    which either model has no defined value is skipped.  The interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the resampled
    differences.

    Returns None when either model has no defined value, no resample could be
    used, or a result is not finite.  Raises ValueError if the lists differ in
    length, the statistic is unknown, ``resamples < 1`` or ``level`` is not in (0, 1).
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if len(a) != len(b):
        raise ValueError(f"paired samples must be aligned: {len(a)} values vs {len(b)}")
    if int(resamples) < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    stat_a, stat_b = aggregate(a, statistic), aggregate(b, statistic)
    if stat_a is None or stat_b is None:
        return None
    estimate = float(_difference(np.array([stat_a]), np.array([stat_b]))[0])
    xa, da = _values(a)
    xb, db = _values(b)
    n = len(xa)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    differences = []
    remaining = int(resamples)
    while remaining > 0:
        rows = min(chunk, remaining)
        remaining -= rows
        idx = rng.integers(0, n, size=(rows, n))
        sa, oka = _resampled(xa, da, idx, statistic)
        sb, okb = _resampled(xb, db, idx, statistic)
        keep = oka & okb
        differences.append(_difference(sa, sb)[keep])
    diffs = np.concatenate(differences)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return None
    tail = (1.0 - float(level)) / 2.0
    low, high = (float(q) for q in np.quantile(diffs, [tail, 1.0 - tail]))
    if not all(math.isfinite(v) for v in (estimate, low, high)):
        return None
    return Interval(estimate=float(estimate), low=low, high=high)


def metric_difference(
    summary_a: Optional[Mapping[str, Any]],
    summary_b: Optional[Mapping[str, Any]],
    key: str,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Optional[Interval]:
    """Paired bootstrap interval of metric ``key`` (n_fg, n_bg, lambda, d_mean,
    d_var, rho) of model a minus model b, from the summaries' ``per_sample``
    values (see :data:`METRIC_FIELDS`).  None when either summary or its
    per-sample field is missing, the two are not aligned (different lengths),
    or :func:`paired_difference` gives None.  Raises ValueError for an unknown key."""
    if key not in METRIC_FIELDS:
        raise ValueError(f"no per-sample definition for metric {key!r}; known: {sorted(METRIC_FIELDS)}")
    field, statistic = METRIC_FIELDS[key]
    values = []
    for summary in (summary_a, summary_b):
        per_sample = summary.get("per_sample") if isinstance(summary, Mapping) else None
        series = per_sample.get(field) if isinstance(per_sample, Mapping) else None
        if series is None:
            return None
        values.append(series)
    if len(values[0]) != len(values[1]) or len(values[0]) == 0:
        return None
    return paired_difference(values[0], values[1], statistic, resamples=resamples, level=level, seed=seed)
