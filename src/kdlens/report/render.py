"""Write a run's explanation report: report.md, report.html, metrics.json, figures/*.png.

The report puts the paper's evidence side by side for one experiment: the
Table 5 comparison (student S vs baseline B, teacher T and random weights R
for reference) per knowledge-point estimator, the verdicts on Hypotheses 1-3
(Secs. 3.2-3.4) with paired bootstrap intervals over the analysed images, the
teacher against its random initial weights, and Figs. 2, 3/6 and 4 drawn from
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
from typing import Any, Callable, Mapping, Optional

from kdlens.errors import UsageError
from kdlens.report import figures
from kdlens.report.tables import (
    BOOTSTRAP, HYPOTHESES, fmt, fmt_interval, fmt_signed, html_table, hypothesis_verdicts, infer_estimators,
    level_text, markdown_table, number, teacher_vs_random,
)
from kdlens.store import atomic_write_bytes, atomic_write_json, atomic_write_text

METRIC_KEYS = ("n_fg", "n_bg", "lambda", "accuracy")
DYNAMIC_KEYS = ("d_mean", "d_var", "rho")
ROLE_ORDER = ("teacher", "student", "baseline", "random")

HOW_TO_READ = [
    "A knowledge point is an input unit (a grid cell of an image, a point of a cloud) whose entropy H_i is lower than the mean background "
    "entropy by more than b: the layer keeps that unit's information (Sec. 3.2). The entropies are measured "
    "with one or more estimators; every table and verdict is given per estimator, the first being the primary.",
    "N_fg ↑ / N_bg ↓: knowledge points per sample on the object / on the background (Eq. 6-7), at the last epoch.",
    "λ ↑: the share of knowledge points on the object, E[N_fg / (N_fg + N_bg)] (Eq. 5); higher means more "
    "task-relevant knowledge (Fig. 2 relates it to accuracy).",
    "D_mean ↓ / D_var ↓: mean and variance over samples of the weight distance at which a sample's N_fg peaks "
    "(Eq. 8, Fig. 4); small values mean the points are learned quickly and at the same time for all samples.",
    "ρ ↑: the final foreground points as a share of all foreground points ever held during training (Eq. 9, "
    "Fig. 5); high means few detours.",
    "In the table the better of S and B is in bold; T is the teacher and R the teacher's architecture with its "
    "random initial weights (\"nothing learned\"), both shown for reference; – means the value could not be "
    "measured (e.g. T and R have no training dynamics analysed, or too few epochs were analysed).",
    "The row S − B gives the difference and its paired bootstrap confidence interval over the analysed images "
    "(the same images resampled for both models). A comparison holds when the interval lies entirely on the "
    "better side of 0, does not hold when it lies entirely on the worse side, and is inconclusive when it "
    "contains 0: with this many images the difference is within the noise.",
    "Hypothesis 1 needs a higher N_fg and a higher λ; a lower N_bg is reported but not required, because the "
    "paper notes that students of strong teachers may encode more background points too (Sec. 4.2). A "
    "hypothesis holds when all its comparisons hold and does not hold when any of them does not hold.",
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


def normalize(data: Mapping) -> dict:
    """``{"estimators", "layers", "maps"}`` of ``data``; the estimators, when not
    given, in the order they appear under the layers."""
    layers = dict(data.get("layers") or {})
    maps = dict(data.get("maps") or {})
    estimators = list(data.get("estimators") or [])
    if not estimators:
        estimators = infer_estimators(layers)
    return {"estimators": estimators, "layers": layers, "maps": maps}


def _model_metrics(summary: Mapping | None, role: str) -> dict:
    keys = METRIC_KEYS + (() if role in ("teacher", "random") else DYNAMIC_KEYS)
    summary = dict(summary or {})
    out = {k: number(summary.pop(k, None)) for k in keys}
    out.update(summary)  # epochs, samples, per_epoch, per_sample and anything else the summary holds
    return _jsonable(out)


def _roles(models: Mapping) -> list[str]:
    """teacher, student, baseline always (missing ones as empty), random when present, then any other role."""
    return [r for r in ROLE_ORDER if r != "random" or r in models] + [r for r in models if r not in ROLE_ORDER]


def metrics_document(data: Mapping, verdicts: Mapping, versus: Mapping, norm: Mapping | None = None) -> dict:
    """The content of metrics.json (see ``write_report``)."""
    norm = norm or normalize(data)
    layers, estimators = norm["layers"], norm["estimators"]
    strip = lambda result: {"verdict": result["verdict"], "metrics": result["metrics"],  # noqa: E731
                            "sentence": result["sentence"]}
    return _jsonable({
        "title": data.get("title"),
        "distilled_layer": data.get("distilled_layer"),
        "estimators": estimators,
        "bootstrap": verdicts["bootstrap"],
        "layers": {
            layer: {est: {role: _model_metrics(((by_est or {}).get(est) or {}).get(role), role)
                          for role in _roles((by_est or {}).get(est) or {})}
                    for est in estimators}
            for layer, by_est in layers.items()
        },
        "hypotheses": {"primary": verdicts["primary"],
                       **{est: {h: strip(r) for h, r in by_h.items()}
                          for est, by_h in verdicts["by_estimator"].items()}},
        "estimators_agree": verdicts["agreement"],
        "per_layer_hypotheses": {
            layer: {est: {h: v[h]["verdict"] for h in HYPOTHESES} for est, v in by_est.items()}
            for layer, by_est in verdicts["per_layer"].items()
        },
        "comparisons": {layer: {est: v["comparisons"] for est, v in by_est.items()}
                        for layer, by_est in verdicts["per_layer"].items()},
        "teacher_vs_random": versus,
        "settings": data.get("settings") or {},
        "timing": data.get("timing") or {},
    })


def _value(key: str, value: Any) -> str:
    x = number(value)
    if key.endswith("_s") and x is not None:  # durations in seconds
        return f"{x:.0f} s" if x < 120 else f"{x / 60:.1f} min"
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(_jsonable(value), separators=(", ", ": "))
    return "–" if value is None else str(value)


def _what_was_run(data: Mapping, norm: Mapping) -> str:
    layers = list(norm["layers"].keys())
    settings, timing = data.get("settings") or {}, data.get("timing") or {}
    samples = timing.get("samples", settings.get("samples"))
    estimators = norm["estimators"]
    has_random = any("random" in (models or {}) for by_est in norm["layers"].values()
                     for models in (by_est or {}).values())
    text = (
        f"A teacher (T), a student distilled from it at layer {data.get('distilled_layer')} (S), and a baseline "
        f"with the student's architecture trained from scratch (B) were compared at layer(s) {', '.join(layers) or '–'}"
        + (f" on {samples} samples." if samples is not None else ".")
    )
    if has_random:
        text += " The teacher's architecture with its random initial weights (R) is the reference for nothing learned."
    if estimators:
        text += (f" Knowledge points were measured with {len(estimators)} estimator"
                 f"{'s' if len(estimators) > 1 else ''}: {estimators[0]} (primary)"
                 + "".join(f", {e}" for e in estimators[1:]) + ".")
    if settings.get("max_epochs") is not None:
        text += (f" At most {settings['max_epochs']} evenly spaced checkpoints a model were measured, so D_mean, "
                 "D_var and rho are over those, not over every epoch.")
    if settings:
        text += " Settings: " + "; ".join(f"{k} = {_value(k, v)}" for k, v in settings.items()) + "."
    if timing:
        text += " Timing: " + "; ".join(f"{k} = {_value(k, v)}" for k, v in timing.items()) + "."
    return text


def _blocks(data: Mapping, norm: Mapping, verdicts: Mapping, versus: Mapping,
            figure_paths: Mapping[str, list]) -> list[tuple]:
    layers, estimators = norm["layers"], verdicts["estimators"]
    boot = verdicts["bootstrap"]
    blocks: list[tuple] = [("h1", data.get("title") or "kdlens report"), ("h2", "What was run"),
                           ("p", _what_was_run(data, norm))]
    blocks += [("h2", "Verdicts on the paper's three hypotheses"),
               ("p", f"Decided at the distilled layer {verdicts['layer']}, as the paper's Table 5 focuses on "
                     f"distillation from intermediate-layer features, with the primary estimator "
                     f"({verdicts['primary'] or '–'}). Each comparison of S and B is a paired bootstrap "
                     f"{level_text(boot['level'])} confidence interval of S − B over the analysed images "
                     f"({boot['resamples']} resamples): it holds when the interval lies on the better side of 0, "
                     "does not hold when it lies on the worse side, and is inconclusive when it contains 0."),
               ("ul", [verdicts["sentences"][h] for h in HYPOTHESES])]
    if verdicts["agreement_sentences"]:
        blocks.append(("p", " ".join(verdicts["agreement_sentences"])))
    for est in estimators[1:]:
        blocks += [("h3", f"With the {est} estimator"),
                   ("ul", [verdicts["by_estimator"][est][h]["sentence"] for h in HYPOTHESES])]
    blocks.append(("h3", "Per layer and estimator"))
    head = ["Layer"] + [f"{h.upper()} ({est})" for h in HYPOTHESES for est in estimators]
    rows = [[layer + (" (distilled)" if layer == verdicts["layer"] else "")]
            + [by_est[est][h]["verdict"] for h in HYPOTHESES for est in estimators]
            for layer, by_est in verdicts["per_layer"].items()]
    blocks.append(("grid", head, rows))

    blocks += [("h2", "Teacher vs random weights"),
               ("p", "Whether the teacher encodes more foreground knowledge points than the same architecture with "
                     "its random initial weights (R, nothing learned): T − R with its paired bootstrap "
                     f"{level_text(boot['level'])} interval, more / fewer when the interval excludes 0, "
                     "inconclusive when it contains 0.")]
    rows = []
    for layer, by_est in versus.items():
        for est, v in by_est.items():
            n, lam = v["n_fg"], v["lambda"]
            rows.append([layer, est, fmt(n["teacher"]), fmt(n["random"]),
                         (fmt_signed(n["difference"]) + " " + fmt_interval(n["low"], n["high"])).strip(), n["verdict"],
                         fmt(lam["teacher"]), fmt(lam["random"]),
                         (fmt_signed(lam["difference"]) + " " + fmt_interval(lam["low"], lam["high"])).strip(),
                         lam["verdict"]])
    blocks.append(("grid", ["Layer", "Estimator", "N_fg T", "N_fg R", "N_fg T − R", "N_fg", "λ T", "λ R",
                            "λ T − R", "λ"], rows))
    blocks.append(("ul", [v["sentence"] for by_est in versus.values() for v in by_est.values()]))

    blocks.append(("h2", "Student vs baseline (cf. paper Table 5)"))
    for layer, by_est in layers.items():
        shown = {est: (by_est or {}).get(est) or {} for est in estimators}
        comparisons = {est: verdicts["per_layer"][layer][est]["comparisons"] for est in estimators}
        blocks += [("h3", f"Layer {layer}" + (" (distilled)" if layer == verdicts["layer"] else "")),
                   ("raw", markdown_table(shown, comparisons), html_table(shown, comparisons))]
    blocks.append(("h2", "Figures"))
    for key, items in figure_paths.items():
        blocks.append(("h3", key))
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
th{background:#f3f3f3}td:first-child,th:first-child,td.model{text-align:left}tr.row-T td,tr.row-R td{color:#666}
tr.row-diff td{font-style:italic;white-space:nowrap}
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


def _has_mimic(models: Mapping) -> bool:
    per_epoch = (models.get("student") or {}).get("per_epoch") or []
    return any(number(row.get("mimic_accuracy")) is not None for row in per_epoch)


# draws one layer's unit maps for one estimator: (layer, maps, estimator) ->
# (PNG bytes, caption); each modality has one (``Modality.unit_maps``)
UnitMaps = Callable[[str, Mapping, str], "tuple[bytes, str]"]


def grid_unit_maps(layer: str, maps: Mapping, estimator: str) -> tuple[bytes, str]:
    """The image modality's maps (grid cells over images), the default of :func:`write_report`."""
    return (figures.knowledge_point_maps(layer, maps, estimator=estimator),
            f"Knowledge points at {layer} ({estimator} estimator): foreground points orange, "
            "background points blue (Fig. 3 / 6)")


def _maps_plot(layer: str, est: str, layer_maps: Mapping, unit_maps: UnitMaps) -> tuple:
    """The ("maps", draw, caption) entry of one layer and estimator: the
    layer's shared inputs (everything but the estimators' entries) with the
    estimator's roles, drawn by the modality's ``unit_maps``."""
    flat = {key: value for key, value in layer_maps.items() if not isinstance(value, Mapping)}
    flat.update(layer_maps[est])
    png, caption = unit_maps(layer, flat, est)
    return ("maps", lambda: png, caption)


def write_report(out_dir: str | Path, data: Mapping, *, bootstrap: Mapping | None = None,
                 unit_maps: Optional[UnitMaps] = None) -> dict[str, Path]:
    """Write the report for ``data`` into ``out_dir`` and return every written
    file by its path relative to ``out_dir`` ("report.md", "report.html",
    "metrics.json", "figures/<stem>_<layer>_<estimator>.png" with stem maps,
    points_vs_distance, lambda_vs_accuracy, metrics).

    ``data``::

        {"title": str, "distilled_layer": str, "settings": {...}, "timing": {...},
         "estimators": [name, ...],             # the first is the primary one
         "layers": {layer: {estimator: {role: summary}}},
         "maps": {layer: {"images": (N,3,H,W) in [0,1], "masks": (N,H,W) bool,
                          estimator: {role: {"entropy": (N,G,G), "points": (N,G,G) bool,
                                             "foreground": (N,G,G) bool}}}}}   # optional

    That is the image layout. Another input kind holds its own inputs in
    place of "images" and "masks" (``Modality.report_inputs``) and per unit
    what images hold per grid cell; ``unit_maps`` is its modality's drawer of
    figures/maps_<layer>_<estimator>.png (``Modality.unit_maps``), and
    :func:`grid_unit_maps` (images) when not given. For point clouds::

         {"clouds": (N,P,3) xyz, "masks": (N,P) bool (the object's points),
          estimator: {role: {"entropy": (N,P), "points": (N,P) bool, "foreground": (N,P) bool}}}

    Roles are "teacher", "student", "baseline" and optionally "random" (the
    teacher's architecture with its random initial weights).  A summary is
    ``kdlens.explain.analyze.summarize_role``'s (n_fg, n_bg, lambda,
    accuracy, epochs, samples, per_epoch with optional "mimic_accuracy", and
    d_mean, d_var, rho for student / baseline) plus ``per_sample``: {"n_fg",
    "n_bg", "ratio", "d", "rho"}, each a list of float or None over the same N
    images in the same order for every role and estimator.  Without
    per_sample a comparison is "not evaluated" (point values still shown).
    ``bootstrap`` overrides {"resamples": 2000, "level": 0.95, "seed": 0}.

    metrics.json::

        {"title", "distilled_layer", "estimators": [...],
         "bootstrap": {"resamples", "level", "seed"},
         "layers": {layer: {estimator: {role: {"n_fg", "n_bg", "lambda", "accuracy",
                    ["d_mean", "d_var", "rho" for student / baseline], "epochs", "samples",
                    "per_epoch", "per_sample", ...}}}},
         "hypotheses": {"primary": estimator,
                        estimator: {"h1"|"h2"|"h3": {"verdict": str, "sentence": str,
                                    "metrics": {key: {"student", "baseline", "difference",
                                                      "low", "high", "verdict"}}}}},   # at the distilled layer
         "estimators_agree": {other estimator: {h: bool}},   # same verdict as the primary
         "per_layer_hypotheses": {layer: {estimator: {h: verdict}}},
         "comparisons": {layer: {estimator: {key: {"student", "baseline", "difference",
                                                   "low", "high", "verdict"}}}},   # the six metrics, S − B
         "teacher_vs_random": {layer: {estimator: {
                "n_fg": {"teacher", "random", "difference", "low", "high",
                         "verdict": "more"|"fewer"|"inconclusive"|"not evaluated"},
                "lambda": {..., "verdict": "higher"|"lower"|"inconclusive"|"not evaluated"},
                "sentence": str}}},
         "settings", "timing"}

    A verdict is "holds", "does not hold", "inconclusive" or "not evaluated"
    (see ``kdlens.report.tables``); differences are S − B (T − R), low / high
    the bootstrap interval (null where it could not be computed), every
    non-finite number null.  Missing values are shown as "–" in the reports."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    norm = normalize(data)
    layers, maps, estimators = norm["layers"], norm["maps"], norm["estimators"]
    distilled = data.get("distilled_layer")
    settings = {**BOOTSTRAP, **dict(bootstrap or {})}
    verdicts = hypothesis_verdicts(layers, distilled, estimators, bootstrap=settings)
    versus = {layer: {est: teacher_vs_random((by_est or {}).get(est), layer, est, settings) for est in estimators}
              for layer, by_est in layers.items()}
    written: dict[str, Path] = {}

    figure_paths: dict[str, list] = {}
    for layer in list(layers) + [m for m in maps if m not in layers]:
        layer_maps = maps.get(layer)
        for est in estimators:
            models = (layers.get(layer) or {}).get(est)
            plots = []
            if layer_maps is not None and layer_maps.get(est) is not None:
                if unit_maps is None and layer_maps.get("images") is None:
                    raise UsageError(f"the maps of layer {layer!r} hold no images; expected unit_maps, the "
                                     "drawer of their modality (Modality.unit_maps)")
                plots.append(_maps_plot(layer, est, layer_maps, unit_maps or grid_unit_maps))
            if models is not None:
                plots += [
                    ("points_vs_distance",
                     lambda l=layer, m=models, e=est: figures.points_vs_distance(l, m, estimator=e),
                     f"N_fg (solid) and N_bg (dashed) against weight distance at {layer} ({est} estimator, Fig. 4)"),
                    ("lambda_vs_accuracy",
                     lambda l=layer, m=models, e=est: figures.lambda_vs_accuracy(l, m, distilled_layer=distilled,
                                                                                 estimator=e),
                     f"λ against accuracy over epochs at {layer} ({est} estimator), teacher as a star, random "
                     "weights as a cross (Fig. 2)" + (
                         f"; during distillation (hollow markers) the student's accuracy is read through the "
                         f"teacher's layers above {distilled}" if _has_mimic(models) else "")),
                    ("metrics", lambda l=layer, m=models, e=est: figures.metric_bars(l, m, estimator=e),
                     f"The six metrics of Table 5, student vs baseline, at {layer} ({est} estimator)"),
                ]
            items = []
            for stem, draw, caption in plots:
                rel = f"figures/{stem}_{_safe(layer)}_{_safe(est)}.png"
                atomic_write_bytes(out_dir / rel, draw())
                written[rel] = out_dir / rel
                items.append((rel, caption))
            if items:
                figure_paths[f"Layer {layer}, {est} estimator"] = items

    atomic_write_json(out_dir / "metrics.json", metrics_document(data, verdicts, versus, norm))
    written["metrics.json"] = out_dir / "metrics.json"
    blocks = _blocks(data, norm, verdicts, versus, figure_paths)
    atomic_write_text(out_dir / "report.md", _markdown(blocks))
    written["report.md"] = out_dir / "report.md"
    atomic_write_text(out_dir / "report.html", _html(blocks, data.get("title") or "kdlens report"))
    written["report.html"] = out_dir / "report.html"
    return written
