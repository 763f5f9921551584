"""The paper's comparison table (Table 5) and verdicts on its three hypotheses.

Table 5 of the paper compares, per network layer, the student (S, distilled)
with the baseline (B, learned from scratch) on N_fg ↑, N_bg ↓, λ ↑ (Sec. 3.2),
D_mean ↓, D_var ↓ (Sec. 3.3, Eq. 8) and ρ ↑ (Sec. 3.4, Eq. 9), the better value
of each pair in bold. Here a teacher row (T, as in Table 4), a row for the
teacher's architecture with its random initial weights (R, the reference for
"nothing learned") and the test accuracy are added; T and R have no dynamics
metrics, so those cells are "–". Knowledge points may be measured with several
estimators; every table and verdict is given per estimator, the first one
being the primary.

Verdicts (for the distilled layer first: "in Table 5, we mainly focused on
distillation from intermediate-layer features", Sec. 4.2):

* H1, "Knowledge distillation makes the DNN encode more knowledge points than
  learning from scratch": student N_fg > baseline N_fg AND student λ > baseline λ.
  N_bg is reported but not required, because the paper itself does not require
  it: "Very few student networks ... encoded more background knowledge points
  than the baseline network. This occurred because teacher networks ... encoded
  far more knowledge points than necessary" (Sec. 4.2), and Table 4 checks H1 by
  "larger values of N_fg and λ".
* H2, "more likely to learn different knowledge points simultaneously":
  student D_mean < baseline D_mean AND student D_var < baseline D_var.
* H3, "more stable optimization directions" (fewer detours): student ρ > baseline ρ.

Every metric comparison is decided on the paired bootstrap interval of S − B
over the analysed images (``kdlens.report.bootstrap``, 95 % by default):
"holds" when the interval lies entirely on the better side of 0, "does not
hold" when it lies entirely on the worse side, "inconclusive" when it contains
0 (a tie included), and "not evaluated" when a value or the per-sample values
needed for the interval are missing. A hypothesis holds when all its metrics
hold, does not hold when any of them does not hold, and is otherwise "not
evaluated" if any metric was not evaluated, else "inconclusive".
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Optional, Sequence

from kdlens.report.bootstrap import METRIC_FIELDS, Interval, metric_difference, number

DASH = "–"
MINUS = "−"

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
NOT_EVALUATED = "not evaluated"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_EVALUATED)

# (summary key, label, arrow, higher is better)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("n_fg", "N_fg", "↑", True),
    ("n_bg", "N_bg", "↓", False),
    ("lambda", "λ", "↑", True),
    ("d_mean", "D_mean", "↓", False),
    ("d_var", "D_var", "↓", False),
    ("rho", "ρ", "↑", True),
    ("accuracy", "Test accuracy", "↑", True),
)
COMPARED = tuple(key for key, *_ in METRICS if key in METRIC_FIELDS)  # the six metrics with a per-sample form
DYNAMIC = ("d_mean", "d_var", "rho")
ROLES = (("T", "teacher"), ("S", "student"), ("B", "baseline"), ("R", "random"))
ROLE_NAMES = {role: short for short, role in ROLES}
_HIGHER = {key: higher for key, _, _, higher in METRICS}
_LABEL = {key: label for key, label, _, _ in METRICS}

HYPOTHESES = {
    "h1": ("Hypothesis 1", "KD makes the network encode more knowledge points", ("n_fg", "lambda")),
    "h2": ("Hypothesis 2", "KD makes the network learn knowledge points more simultaneously", ("d_mean", "d_var")),
    "h3": ("Hypothesis 3", "KD makes the network learn with fewer detours", ("rho",)),
}

BOOTSTRAP = {"resamples": 2000, "level": 0.95, "seed": 0}


def fmt(value: Any, key: str = "") -> str:
    """Two decimals, accuracy as a percentage with one; None as "–".

    Values that are non-zero but would print as 0.00 (D_var can be 1e-4, see
    Table 5) get two significant digits instead, so a bold cell is never "0.00"
    next to a plain "0.00"."""
    x = number(value)
    if x is None:
        return DASH
    if key == "accuracy":
        return f"{100 * x:.1f}%"
    if x != 0 and abs(x) < 0.005:
        return f"{x:.2g}"
    return f"{x:.2f}"


def fmt_signed(value: Any, key: str = "") -> str:
    """Like :func:`fmt` with an explicit sign ("+1.20", "−0.80"; 0 as "0.00")."""
    x = number(value)
    if x is None:
        return DASH
    text = fmt(abs(x), key)
    if text.strip("0.%") == "":  # prints as zero
        return text
    return ("+" if x > 0 else MINUS) + text


def fmt_bound(value: Any, key: str = "") -> str:
    """An interval bound: a minus sign only when negative."""
    x = number(value)
    if x is None:
        return DASH
    text = fmt(abs(x), key)
    return MINUS + text if x < 0 and text.strip("0.%") != "" else text


def fmt_interval(low: Any, high: Any, key: str = "") -> str:
    """"[−0.80, 3.10]", or "" when the interval is missing."""
    if number(low) is None or number(high) is None:
        return ""
    return f"[{fmt_bound(low, key)}, {fmt_bound(high, key)}]"


def level_text(level: float) -> str:
    return f"{100 * level:g} %"


def better(student: Any, baseline: Any, key: str) -> Optional[str]:
    """"S" or "B", whichever is better on ``key``; None if either is missing or they tie."""
    s, b = number(student), number(baseline)
    if s is None or b is None or s == b:
        return None
    return "S" if (s > b) == _HIGHER[key] else "B"


def _get(summary: Optional[Mapping], key: str) -> Any:
    return None if not isinstance(summary, Mapping) else summary.get(key)


def _interval_side(interval: Optional[Interval]) -> Optional[int]:
    """+1 if the interval lies above 0, -1 below, 0 if it contains 0, None if missing."""
    if interval is None:
        return None
    if interval.low > 0:
        return 1
    if interval.high < 0:
        return -1
    return 0


def compare(a_summary: Optional[Mapping], b_summary: Optional[Mapping], key: str, *,
            names: tuple[str, str] = ("student", "baseline"), higher_is_better: Optional[bool] = None,
            words: tuple[str, str] = (HOLDS, FAILS), bootstrap: Optional[Mapping] = None) -> dict:
    """One metric of two models: ``{names[0]: a, names[1]: b, "difference": a − b,
    "low", "high", "verdict"}``, the difference and bounds from the paired
    bootstrap over the summaries' per-sample values (the difference falls back
    to a − b of the point values, without bounds, when there are none).  The
    verdict is words[0] when the interval lies on the better side of 0,
    words[1] on the worse side, "inconclusive" when it contains 0, "not
    evaluated" without an interval."""
    higher = _HIGHER[key] if higher_is_better is None else higher_is_better
    a, b = number(_get(a_summary, key)), number(_get(b_summary, key))
    interval = None
    if key in METRIC_FIELDS and a is not None and b is not None:  # a value the summary lacks is missing
        interval = metric_difference(a_summary, b_summary, key, **{**BOOTSTRAP, **dict(bootstrap or {})})
    side = _interval_side(interval)
    if side is None:
        verdict = NOT_EVALUATED
    elif side == 0:
        verdict = INCONCLUSIVE
    else:
        verdict = words[0] if (side > 0) == higher else words[1]
    if interval is not None:
        difference, low, high = interval.estimate, interval.low, interval.high
    else:
        difference, low, high = (None if a is None or b is None else a - b), None, None
    return {names[0]: a, names[1]: b, "difference": difference, "low": low, "high": high, "verdict": verdict}


def compare_models(models: Optional[Mapping[str, Mapping]], bootstrap: Optional[Mapping] = None) -> dict:
    """S vs B on the six metrics of Table 5: ``{key: compare(...)}`` (see :func:`compare`)."""
    models = models or {}
    return {key: compare(models.get("student"), models.get("baseline"), key, bootstrap=bootstrap) for key in COMPARED}


def combine(verdicts: Sequence[str]) -> str:
    """A hypothesis from its metrics: holds if all hold, does not hold if any
    does not, otherwise not evaluated if any is, else inconclusive."""
    verdicts = list(verdicts)
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == FAILS for v in verdicts):
        return FAILS
    if not verdicts or any(v == NOT_EVALUATED for v in verdicts):
        return NOT_EVALUATED
    return INCONCLUSIVE


def _difference_text(key: str, c: Mapping) -> str:
    """"N_fg S − B = +1.20 [−0.80, 3.10] (S 20.00, B 15.00; inconclusive)"."""
    interval = fmt_interval(c["low"], c["high"], key)
    values = f"S {fmt(c['student'], key)}, B {fmt(c['baseline'], key)}"
    text = f"{_LABEL[key]} S {MINUS} B = {fmt_signed(c['difference'], key)}"
    if interval:
        return f"{text} {interval} ({values}; {c['verdict']})"
    missing = [f"{_LABEL[key]} of the {who}" for who in ("student", "baseline") if c[who] is None]
    why = f"missing: {', '.join(missing)}" if missing else "no per-sample values for an interval"
    return f"{text} ({values}; {NOT_EVALUATED}: {why})"


def hypothesis_result(h: str, layer: str, estimator: str, comparisons: Optional[Mapping[str, Mapping]],
                      level: float = BOOTSTRAP["level"]) -> dict:
    """``{"verdict", "metrics": {key: comparison}, "sentence"}`` of hypothesis
    ``h`` at one layer and estimator; ``comparisons`` None: not analysed."""
    name, claim, keys = HYPOTHESES[h]
    head = f"{name} ({claim})"
    if comparisons is None:
        return {"verdict": NOT_EVALUATED, "metrics": {},
                "sentence": f"{head} {NOT_EVALUATED} at {layer} ({estimator}): not analysed with this estimator."}
    metrics = {k: dict(comparisons[k]) for k in keys}
    verdict = combine([m["verdict"] for m in metrics.values()])
    parts = [_difference_text(k, m) for k, m in metrics.items()]
    sentence = f"{head} {verdict} at {layer} ({estimator}; {level_text(level)} intervals): " + "; ".join(parts)
    if h == "h1" and "n_bg" in comparisons:  # N_bg is reported, not required (see the module docstring)
        sentence += f". Reported, not required: {_difference_text('n_bg', comparisons['n_bg'])}"
    return {"verdict": verdict, "metrics": metrics, "sentence": sentence + "."}


def infer_estimators(layers: Mapping[str, Mapping]) -> list[str]:
    """The estimator names in the order they first appear under the layers."""
    names: list[str] = []
    for by_estimator in layers.values():
        for name in by_estimator or {}:
            if name not in names:
                names.append(name)
    return names


def hypothesis_verdicts(layers: Mapping[str, Mapping], distilled_layer: str,
                        estimators: Optional[Sequence[str]] = None, *,
                        bootstrap: Optional[Mapping] = None) -> dict:
    """Verdicts on Hypotheses 1-3 (Secs. 3.2-3.4) for every layer and estimator.

    ``layers`` is ``{layer: {estimator: {role: summary}}}``; ``estimators`` (the
    first is the primary) defaults to the names found under the layers;
    ``bootstrap`` overrides ``BOOTSTRAP`` (resamples, level, seed).  Returns::

        {"layer": distilled_layer, "primary": estimators[0], "estimators": [...],
         "bootstrap": {"resamples", "level", "seed"},
         "h1" / "h2" / "h3": verdict string of the primary estimator at the distilled layer,
         "sentences": {h: sentence} of the same,
         "by_estimator": {estimator: {h: {"verdict", "metrics", "sentence"}}}  (distilled layer),
         "per_layer": {layer: {estimator: {h: {...}, "comparisons": {key: comparison}}}},
         "agreement": {other estimator: {h: bool}}  (same verdict as the primary),
         "agreement_sentences": [str]}

    A comparison is ``{"student", "baseline", "difference", "low", "high", "verdict"}``.
    """
    settings = {**BOOTSTRAP, **dict(bootstrap or {})}
    estimators = list(estimators) if estimators else infer_estimators(layers)
    per_layer: dict = {}
    for layer, by_estimator in layers.items():
        per_layer[layer] = {}
        for est in estimators:
            models = (by_estimator or {}).get(est)
            comparisons = None if models is None else compare_models(models, settings)
            per_layer[layer][est] = {
                **{h: hypothesis_result(h, layer, est, comparisons, settings["level"]) for h in HYPOTHESES},
                "comparisons": comparisons or {},
            }
    by_estimator = {
        est: {h: (per_layer.get(distilled_layer, {}).get(est) or {}).get(h)
              or hypothesis_result(h, distilled_layer, est, None) for h in HYPOTHESES}
        for est in estimators
    }
    if distilled_layer not in per_layer:
        for est in estimators:
            for h, (name, claim, _) in HYPOTHESES.items():
                by_estimator[est][h]["sentence"] = (f"{name} ({claim}) {NOT_EVALUATED}: layer {distilled_layer} "
                                                    "was not analysed.")
    primary = estimators[0] if estimators else None
    head = by_estimator.get(primary) or {
        h: {"verdict": NOT_EVALUATED, "metrics": {},
            "sentence": f"{name} ({claim}) {NOT_EVALUATED}: no knowledge-point estimator was analysed."}
        for h, (name, claim, _) in HYPOTHESES.items()}
    agreement, agreement_sentences = {}, []
    for est in estimators[1:]:
        # only hypotheses both estimators could evaluate are compared
        both = [h for h in HYPOTHESES if NOT_EVALUATED not in (by_estimator[est][h]["verdict"], head[h]["verdict"])]
        agreement[est] = {h: by_estimator[est][h]["verdict"] == head[h]["verdict"] for h in both}
        agree = [h.upper() for h, same in agreement[est].items() if same]
        differ = [f"{h.upper()} ({by_estimator[est][h]['verdict']} vs {head[h]['verdict']})"
                  for h, same in agreement[est].items() if not same]
        unchecked = [h.upper() for h in HYPOTHESES if h not in both]
        if not both:
            text = f"The {est} estimator and the primary ({primary}) evaluated no hypothesis in common."
        elif not differ:
            text = f"The {est} estimator agrees with the primary ({primary}) on {', '.join(agree)}."
        else:
            text = (f"The {est} estimator " + (f"agrees with the primary ({primary}) on {', '.join(agree)} but "
                                               if agree else "")
                    + f"disagrees on {', '.join(differ)}" + ("" if agree else f" with the primary ({primary})") + ".")
        if both and unchecked:
            text = text[:-1] + f"; {', '.join(unchecked)} not evaluated by both."
        agreement_sentences.append(text)
    return {
        "layer": distilled_layer,
        "primary": primary,
        "estimators": estimators,
        "bootstrap": settings,
        **{h: head[h]["verdict"] for h in HYPOTHESES},
        "sentences": {h: head[h]["sentence"] for h in HYPOTHESES},
        "by_estimator": by_estimator,
        "per_layer": per_layer,
        "agreement": agreement,
        "agreement_sentences": agreement_sentences,
    }


def teacher_vs_random(models: Optional[Mapping[str, Mapping]], layer: str, estimator: str,
                      bootstrap: Optional[Mapping] = None) -> dict:
    """Did the teacher learn knowledge points? T vs its random initial weights R:
    ``{"n_fg": {"teacher", "random", "difference", "low", "high", "verdict":
    "more" | "fewer" | "inconclusive" | "not evaluated"}, "lambda": {... "higher"
    | "lower" | ...}, "sentence"}`` with paired bootstrap intervals of T − R."""
    settings = {**BOOTSTRAP, **dict(bootstrap or {})}
    models = models or {}
    teacher, random = models.get("teacher"), models.get("random")
    out = {
        "n_fg": compare(teacher, random, "n_fg", names=("teacher", "random"), higher_is_better=True,
                        words=("more", "fewer"), bootstrap=settings),
        "lambda": compare(teacher, random, "lambda", names=("teacher", "random"), higher_is_better=True,
                          words=("higher", "lower"), bootstrap=settings),
    }
    if random is None or teacher is None:
        missing = "random-weights model" if random is None else "teacher"
        out["sentence"] = f"At {layer} ({estimator}): not evaluated, no {missing} was analysed."
        return out
    parts = []
    for key, what in (("n_fg", "foreground knowledge points"), ("lambda", "share of points on the object")):
        c = out[key]
        interval = fmt_interval(c["low"], c["high"], key)
        detail = f"{_LABEL[key]} T {fmt(c['teacher'], key)} vs R {fmt(c['random'], key)}, T {MINUS} R = " \
                 f"{fmt_signed(c['difference'], key)}" + (f" {interval}" if interval else "")
        word = c["verdict"]
        if word in (INCONCLUSIVE, NOT_EVALUATED):
            parts.append(f"{what}: {word} ({detail})")
        else:
            article = "a " if key == "lambda" else ""
            parts.append(f"{article}{word} {what} than its random initial weights ({detail})")
    out["sentence"] = f"At {layer} ({estimator}) the teacher has " + "; ".join(parts) + "."
    return out


def table_rows(models: Mapping[str, Mapping], comparisons: Optional[Mapping[str, Mapping]] = None) -> list[dict]:
    """Rows T, S, B (and R when the random-weights model is present) of one layer
    and estimator: ``{"row": "S", "role", "cells": [(text, bold), ...]}`` in
    METRICS order; with ``comparisons`` a last row "S − B" gives the difference
    and its interval.  T and R are shown for reference and never bold (Table 5
    bolds S vs B only); they have no training dynamics, so those cells are "–"."""
    s_sum, b_sum = models.get("student"), models.get("baseline")
    winners = {key: better(_get(s_sum, key), _get(b_sum, key), key) for key, *_ in METRICS}
    rows = []
    for short, role in ROLES:
        if role == "random" and role not in models:
            continue
        summary = models.get(role)
        cells = []
        for key, *_ in METRICS:
            value = None if role in ("teacher", "random") and key in DYNAMIC else _get(summary, key)
            cells.append((fmt(value, key), winners[key] == short))
        rows.append({"row": short, "role": role, "cells": cells})
    if comparisons is not None:
        cells = []
        for key, *_ in METRICS:
            c = comparisons.get(key)
            if c is None:
                cells.append((DASH, False))
                continue
            interval = fmt_interval(c["low"], c["high"], key)
            cells.append(((fmt_signed(c["difference"], key) + (f" {interval}" if interval else "")), False))
        rows.append({"row": f"S {MINUS} B", "role": "difference", "cells": cells})
    return rows


def _header() -> list[str]:
    return ["Estimator", "Model"] + [f"{label} {arrow}" for _, label, arrow, _ in METRICS]


def markdown_table(by_estimator: Mapping[str, Mapping], comparisons: Optional[Mapping[str, Mapping]] = None) -> str:
    """Table 5 for one layer in markdown: a block of T/S/B/R rows per estimator
    (side by side in one table, the better of S/B in ``**bold**``), followed by
    the S − B row with its interval when ``comparisons`` ({estimator: {key: comparison}}) is given."""
    head = _header()
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":--", ":--"] + ["--:"] * len(METRICS)) + "|"]
    for est, models in by_estimator.items():
        rows = table_rows(models or {}, None if comparisons is None else (comparisons.get(est) or {}))
        for i, row in enumerate(rows):
            cells = [f"**{t}**" if bold else t for t, bold in row["cells"]]
            lines.append("| " + " | ".join([est if i == 0 else "", row["row"]] + cells) + " |")
    return "\n".join(lines)


def html_table(by_estimator: Mapping[str, Mapping], comparisons: Optional[Mapping[str, Mapping]] = None) -> str:
    """Table 5 for one layer in HTML (see :func:`markdown_table`); the estimator cell spans its rows."""
    parts = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in _header()) + "</tr></thead>",
             "<tbody>"]
    for est, models in by_estimator.items():
        rows = table_rows(models or {}, None if comparisons is None else (comparisons.get(est) or {}))
        for i, row in enumerate(rows):
            cells = "".join(
                f"<td>{'<b>' + html.escape(t) + '</b>' if bold else html.escape(t)}</td>" for t, bold in row["cells"]
            )
            first = f'<th rowspan="{len(rows)}">{html.escape(est)}</th>' if i == 0 else ""
            css = "diff" if row["role"] == "difference" else row["row"]
            parts.append(f'<tr class="row-{css}">{first}<td class="model">{html.escape(row["row"])}</td>{cells}</tr>')
    parts += ["</tbody>", "</table>"]
    return "\n".join(parts)
