"""The paper's comparison table (Table 5) and verdicts on its three hypotheses.

Table 5 of the paper compares, per network layer, the student (S, distilled)
with the baseline (B, learned from scratch) on N_fg ↑, N_bg ↓, λ ↑ (Sec. 3.2),
D_mean ↓, D_var ↓ (Sec. 3.3, Eq. 8) and ρ ↑ (Sec. 3.4, Eq. 9), the better value
of each pair in bold. Here a teacher row (T, as in Table 4) and the test
accuracy are added; the teacher has no dynamics metrics, so those cells are "–".

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

A verdict is True/False only when every metric it needs is known for both
models; otherwise it is None ("could not be evaluated"), never False.
Comparisons are strict, so a tie does not count as support.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Optional

DASH = "–"

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
ROLES = (("T", "teacher"), ("S", "student"), ("B", "baseline"))
_HIGHER = {key: higher for key, _, _, higher in METRICS}
_LABEL = {key: label for key, label, _, _ in METRICS}

HYPOTHESES = {
    "h1": ("Hypothesis 1", "KD makes the network encode more knowledge points", ("n_fg", "lambda")),
    "h2": ("Hypothesis 2", "KD makes the network learn knowledge points more simultaneously", ("d_mean", "d_var")),
    "h3": ("Hypothesis 3", "KD makes the network learn with fewer detours", ("rho",)),
}


def number(value: Any) -> Optional[float]:
    """A plain float, or None for missing / non-numeric / NaN (tensors and numpy scalars accepted)."""
    if value is None or isinstance(value, bool):
        return None
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # a tensor with more than one element is no metric
            return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


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


def better(student: Any, baseline: Any, key: str) -> Optional[str]:
    """"S" or "B", whichever is better on ``key``; None if either is missing or they tie."""
    s, b = number(student), number(baseline)
    if s is None or b is None or s == b:
        return None
    return "S" if (s > b) == _HIGHER[key] else "B"


def _get(summary: Optional[Mapping], key: str) -> Any:
    return None if not summary else summary.get(key)


def table_rows(layer_data: Mapping[str, Mapping]) -> list[dict]:
    """Rows T, S, B of one layer: ``{"row": "S", "cells": [(text, bold), ...]}`` in METRICS order.
    The teacher is shown for reference and never bold (Table 5 bolds S vs B only)."""
    s_sum, b_sum = layer_data.get("student"), layer_data.get("baseline")
    winners = {key: better(_get(s_sum, key), _get(b_sum, key), key) for key, *_ in METRICS}
    rows = []
    for short, role in ROLES:
        summary = layer_data.get(role)
        cells = []
        for key, *_ in METRICS:
            value = None if role == "teacher" and key in ("d_mean", "d_var", "rho") else _get(summary, key)
            cells.append((fmt(value, key), winners[key] == short))
        rows.append({"row": short, "role": role, "cells": cells})
    return rows


def _header() -> list[str]:
    return ["Layer", "Model"] + [f"{label} {arrow}" for _, label, arrow, _ in METRICS]


def markdown_table(layers: Mapping[str, Mapping]) -> str:
    """Table 5 in markdown: one block of T/S/B rows per layer, better of S/B in ``**bold**``."""
    head = _header()
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":--", ":--"] + ["--:"] * len(METRICS)) + "|"]
    for layer, layer_data in layers.items():
        for i, row in enumerate(table_rows(layer_data)):
            cells = [f"**{t}**" if bold else t for t, bold in row["cells"]]
            lines.append("| " + " | ".join([layer if i == 0 else "", row["row"]] + cells) + " |")
    return "\n".join(lines)


def html_table(layers: Mapping[str, Mapping]) -> str:
    """Table 5 in HTML, better of S/B in ``<b>``; the layer cell spans its rows."""
    parts = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in _header()) + "</tr></thead>", "<tbody>"]
    for layer, layer_data in layers.items():
        rows = table_rows(layer_data)
        for i, row in enumerate(rows):
            cells = "".join(
                f"<td>{'<b>' + html.escape(t) + '</b>' if bold else html.escape(t)}</td>" for t, bold in row["cells"]
            )
            first = f'<th rowspan="{len(rows)}">{html.escape(layer)}</th>' if i == 0 else ""
            parts.append(f'<tr class="row-{row["row"]}">{first}<td class="model">{row["row"]}</td>{cells}</tr>')
    parts += ["</tbody>", "</table>"]
    return "\n".join(parts)


def _layer_verdicts(layer: str, layer_data: Optional[Mapping]) -> dict:
    """Verdicts and sentences for one layer (see the module docstring for the rules)."""
    s_sum = _get(layer_data, "student")
    b_sum = _get(layer_data, "baseline")
    out: dict = {"sentences": {}}
    for h, (name, claim, keys) in HYPOTHESES.items():
        if layer_data is None:
            out[h] = None
            out["sentences"][h] = f"{name} ({claim}) could not be evaluated: layer {layer} was not analysed."
            continue
        pairs = {k: (number(_get(s_sum, k)), number(_get(b_sum, k))) for k in keys}
        missing = [f"{_LABEL[k]} of the {who}" for k, (s, b) in pairs.items() for who, v in (("student", s), ("baseline", b)) if v is None]
        numbers = "; ".join(f"{_LABEL[k]} {fmt(s, k)} (student) vs {fmt(b, k)} (baseline)" for k, (s, b) in pairs.items())
        if h == "h1":  # N_bg is reported, not required (see the module docstring)
            s_bg, b_bg = number(_get(s_sum, "n_bg")), number(_get(b_sum, "n_bg"))
            lower = "" if s_bg is None or b_bg is None else (" (lower, as the paper expects)" if s_bg < b_bg else " (not lower; the paper does not require it)")
            numbers += f"; N_bg {fmt(s_bg)} vs {fmt(b_bg)}{lower}"
        if missing:
            out[h] = None
            out["sentences"][h] = f"{name} ({claim}) could not be evaluated at {layer} (missing: {', '.join(missing)}); {numbers}."
            continue
        holds = all(better(s, b, k) == "S" for k, (s, b) in pairs.items())
        out[h] = holds
        verdict = "holds" if holds else "does not hold on this data"
        out["sentences"][h] = f"{name} ({claim}) {verdict} at {layer}: {numbers}."
    return out


def hypothesis_verdicts(layers: Mapping[str, Mapping], distilled_layer: str) -> dict:
    """Verdicts on Hypotheses 1-3 (Secs. 3.2-3.4), decided at ``distilled_layer``.

    Returns ``{"layer", "h1", "h2", "h3", "sentences": {h: str}, "per_layer":
    {layer: {"h1", "h2", "h3", "sentences"}}}``; each verdict is True, False,
    or None when a metric it needs is missing."""
    per_layer = {layer: _layer_verdicts(layer, data) for layer, data in layers.items()}
    primary = per_layer.get(distilled_layer) or _layer_verdicts(distilled_layer, None)
    return {
        "layer": distilled_layer,
        **{h: primary[h] for h in HYPOTHESES},
        "sentences": dict(primary["sentences"]),
        "per_layer": per_layer,
    }
