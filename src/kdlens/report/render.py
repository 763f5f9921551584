"""Write a run's explanation report: report.md, report.html, metrics.json, figures/*.png.

The report puts the paper's evidence side by side for one experiment: the
Table 5 comparison (student S vs baseline B, teacher T for reference), the
verdicts on Hypotheses 1-3 (Secs. 3.2-3.4) and Figs. 2, 3/6 and 4 drawn from
this run.  Markdown and HTML are rendered from one list of blocks so they
always say the same thing.  Every file is written atomically (temporary name,
then ``os.replace``), figures first and the two reports last, so a report
never points at a figure that is not there yet.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from kdlens.report import figures
from kdlens.report.tables import HYPOTHESES, hypothesis_verdicts, html_table, markdown_table, number
from kdlens.store import atomic_write_bytes, atomic_write_json, atomic_write_text

METRIC_KEYS = ("n_fg", "n_bg", "lambda", "accuracy")
DYNAMIC_KEYS = ("d_mean", "d_var", "rho")

HOW_TO_READ = [
    "A knowledge point is an input unit (a grid cell) whose entropy H_i is lower than the mean background "
    "entropy by more than b: the layer keeps that unit's information (Sec. 3.2).",
    "N_fg ↑ / N_bg ↓: knowledge points per sample on the object / on the background (Eq. 6-7), at the last epoch.",
    "λ ↑: the share of knowledge points on the object, E[N_fg / (N_fg + N_bg)] (Eq. 5); higher means more "
    "task-relevant knowledge (Fig. 2 relates it to accuracy).",
    "D_mean ↓ / D_var ↓: mean and variance over samples of the weight distance at which a sample's N_fg peaks "
    "(Eq. 8, Fig. 4); small values mean the points are learned quickly and at the same time for all samples.",
    "ρ ↑: the final foreground points as a share of all foreground points ever held during training (Eq. 9, "
    "Fig. 5); high means few detours.",
    "In the table the better of S and B is in bold; T is the teacher, shown for reference; – means the value "
    "could not be measured (e.g. the teacher has no training dynamics analysed, or too few epochs were analysed).",
    "Hypothesis 1 needs a higher N_fg and a higher λ; a lower N_bg is reported but not required, because the "
    "paper notes that students of strong teachers may encode more background points too (Sec. 4.2).",
]


def _jsonable(value: Any) -> Any:
    """Plain JSON: tensors / numpy become lists or numbers, NaN and inf become null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _model_metrics(summary: Mapping | None, role: str) -> dict:
    keys = METRIC_KEYS + (() if role == "teacher" else DYNAMIC_KEYS)
    summary = dict(summary or {})
    out = {k: number(summary.pop(k, None)) for k in keys}
    out.update(summary)  # epochs, samples, per_epoch and anything else the summary holds
    return _jsonable(out)


def metrics_document(data: Mapping, verdicts: Mapping) -> dict:
    """The content of metrics.json (see ``write_report``)."""
    layers = data.get("layers") or {}
    return {
        "title": data.get("title"),
        "distilled_layer": data.get("distilled_layer"),
        "layers": {
            layer: {role: _model_metrics(models.get(role), role) for role in ("teacher", "student", "baseline")}
            for layer, models in layers.items()
        },
        "hypotheses": {h: verdicts[h] for h in HYPOTHESES},
        "hypothesis_sentences": verdicts["sentences"],
        "per_layer_hypotheses": {
            layer: {h: v[h] for h in HYPOTHESES} for layer, v in verdicts["per_layer"].items()
        },
        "settings": _jsonable(data.get("settings") or {}),
        "timing": _jsonable(data.get("timing") or {}),
    }


def _value(key: str, value: Any) -> str:
    x = number(value)
    if key.endswith("_s") and x is not None:  # durations in seconds
        return f"{x:.0f} s" if x < 120 else f"{x / 60:.1f} min"
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(_jsonable(value), separators=(", ", ": "))
    return "–" if value is None else str(value)


def _what_was_run(data: Mapping) -> str:
    layers = list((data.get("layers") or {}).keys())
    settings, timing = data.get("settings") or {}, data.get("timing") or {}
    samples = timing.get("samples", settings.get("samples"))
    text = (
        f"A teacher (T), a student distilled from it at layer {data.get('distilled_layer')} (S), and a baseline "
        f"with the student's architecture trained from scratch (B) were compared at layer(s) {', '.join(layers) or '–'}"
        + (f" on {samples} samples." if samples is not None else ".")
    )
    if settings:
        text += " Settings: " + "; ".join(f"{k} = {_value(k, v)}" for k, v in settings.items()) + "."
    if timing:
        text += " Timing: " + "; ".join(f"{k} = {_value(k, v)}" for k, v in timing.items()) + "."
    return text


def _verdict_word(v: bool | None) -> str:
    return "–" if v is None else ("holds" if v else "does not hold")


def _blocks(data: Mapping, verdicts: Mapping, figure_paths: Mapping[str, list]) -> list[tuple]:
    layers = data.get("layers") or {}
    blocks: list[tuple] = [("h1", data.get("title") or "kdlens report"), ("h2", "What was run"), ("p", _what_was_run(data))]
    blocks += [("h2", "Verdicts on the paper's three hypotheses"),
               ("p", f"Decided at the distilled layer {verdicts['layer']}, as the paper's Table 5 focuses on "
                     "distillation from intermediate-layer features."),
               ("ul", [verdicts["sentences"][h] for h in HYPOTHESES])]
    rows = [[layer + (" (distilled)" if layer == verdicts["layer"] else "")] + [_verdict_word(v[h]) for h in HYPOTHESES]
            for layer, v in verdicts["per_layer"].items()]
    blocks.append(("grid", ["Layer", "H1", "H2", "H3"], rows))
    blocks += [("h2", "Student vs baseline (cf. paper Table 5)"),
               ("raw", markdown_table(layers), html_table(layers))]
    blocks.append(("h2", "Figures"))
    for layer, items in figure_paths.items():
        blocks.append(("h3", f"Layer {layer}"))
        blocks += [("figure", rel, caption) for rel, caption in items]
    blocks += [("h2", "How to read this"), ("ul", HOW_TO_READ)]
    return blocks


def _markdown(blocks: list[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "grid":
            head, rows = block[1], block[2]
            out.append("\n".join(["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
                                 + ["| " + " | ".join(r) + " |" for r in rows]))
        elif kind == "raw":
            out.append(block[1])
        elif kind == "figure":
            out.append(f"![{block[2]}]({block[1]})\n\n*{block[2]}*")
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child,td.model{text-align:left}tr.row-T td{color:#666}
figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}"""


def _html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{CSS}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3", "p"):
            out.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "grid":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "raw":
            out.append(block[2])
        elif kind == "figure":
            out.append(f'<figure><img src="{e(block[1])}" alt="{e(block[2])}"><figcaption>{e(block[2])}</figcaption></figure>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def write_report(out_dir: str | Path, data: Mapping) -> dict[str, Path]:
    """Write the report for ``data`` into ``out_dir`` and return every written
    file by its path relative to ``out_dir`` ("report.md", "report.html",
    "metrics.json", "figures/<name>.png").

    ``data`` holds ``title``, ``distilled_layer``, ``settings``, ``timing``,
    ``layers`` ({layer: {"teacher"|"student"|"baseline": summary}}, summaries as
    built by ``kdlens.discarding.analyze.summarize_role``) and optionally ``maps``
    ({layer: {"images", "masks", role: {"entropy", "points", "foreground"}}})
    for the knowledge-point maps.  Missing values are shown as "–"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = data.get("layers") or {}
    maps = data.get("maps") or {}
    verdicts = hypothesis_verdicts(layers, data.get("distilled_layer"))
    written: dict[str, Path] = {}

    figure_paths: dict[str, list] = {}
    for layer in list(layers) + [m for m in maps if m not in layers]:
        items = []
        plots = []
        if maps.get(layer) is not None:
            plots.append(("maps", lambda l=layer: figures.knowledge_point_maps(l, maps[l]),
                          f"Knowledge points at {layer}: foreground points orange, background points blue (Fig. 3 / 6)"))
        if layer in layers:
            plots += [
                ("points_vs_distance", lambda l=layer: figures.points_vs_distance(l, layers[l]),
                 f"N_fg (solid) and N_bg (dashed) against weight distance at {layer} (Fig. 4)"),
                ("lambda_vs_accuracy", lambda l=layer: figures.lambda_vs_accuracy(l, layers[l]),
                 f"λ against test accuracy over epochs at {layer}, teacher as a star (Fig. 2)"),
                ("metrics", lambda l=layer: figures.metric_bars(l, layers[l]),
                 f"The six metrics of Table 5, student vs baseline, at {layer}"),
            ]
        for stem, draw, caption in plots:
            rel = f"figures/{stem}_{_safe(layer)}.png"
            atomic_write_bytes(out_dir / rel, draw())
            written[rel] = out_dir / rel
            items.append((rel, caption))
        figure_paths[layer] = items

    atomic_write_json(out_dir / "metrics.json", metrics_document(data, verdicts))
    written["metrics.json"] = out_dir / "metrics.json"
    blocks = _blocks(data, verdicts, figure_paths)
    atomic_write_text(out_dir / "report.md", _markdown(blocks))
    written["report.md"] = out_dir / "report.md"
    atomic_write_text(out_dir / "report.html", _html(blocks, data.get("title") or "kdlens report"))
    written["report.html"] = out_dir / "report.html"
    return written
