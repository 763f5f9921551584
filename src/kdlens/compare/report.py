"""The comparison's report: ``compare.md`` with the Table-1-style table, the
per-seed numbers, the sample-rate table, the mutual-learning table, the
papers' claims checked on these numbers, the analysis figures and the IEP
knowledge figures; ``results.csv`` and ``analysis.json`` beside it. Every
file is written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from kdlens.compare import figures, iep_figures
from kdlens.compare.config import BASELINE, label_folder
from kdlens.compare.runner import Comparison
from kdlens.compare.seed_interval import interval_text, paired_seed_interval
from kdlens.compare.tables import (
    claims,
    error_stats,
    fmt_error,
    markdown_table,
    markdown_text,
    per_seed_table,
    rate_claims,
    rate_table,
    results_csv,
    table1,
    table4,
)
from kdlens.store import atomic_write_bytes, atomic_write_json, atomic_write_text


def _model_name(model) -> str:
    return f"{model.arch} ×{model.width:g}"


def _claim_lines(checks: list[dict[str, Any]]) -> list[str]:
    lines = []
    for c in checks:
        if c["verdict"] is None:
            lines.append(f"- {markdown_text(c['claim'])}: not measured")
            continue
        lines.append(f"- {markdown_text(c['claim'])}: **{c['verdict']}**, {interval_text(c)}")
    return lines


def _untrained_lines(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Methods that did not even fit their training data: their test error
    says the loss overwhelmed the task, not how well they transfer knowledge."""
    lines = []
    for title, per_seed in results.items():
        train = error_stats(per_seed, "train_error")
        if train["mean"] is not None and train["mean"] >= 50.0:
            lines.append(f"- {markdown_text(title)} did not fit the training set (train error {train['mean']:.1f}%): "
                         "its distillation loss overwhelmed the task loss at these settings")
    return lines


def _sharpness_lines(curves: Mapping[str, list], baseline: str, ie_titles: Sequence[str]) -> list[str]:
    """IE-KD vs independent rise of the training loss under weight noise. As in
    the paper (whose two minima had training losses 0.131 and 0.126), a rise is
    only compared between minima of similar depth: the unperturbed losses within
    a factor of 2 of each other (a network stuck near chance is flat, not good)."""
    base = curves[baseline]
    lines = []
    for title in [t for t in curves if t in ie_titles]:
        curve = curves[title]
        depth, base_depth = curve[0]["loss_mean"], base[0]["loss_mean"]
        rise, base_rise = curve[-1]["loss_mean"] - depth, base[-1]["loss_mean"] - base_depth
        head = (f"- {markdown_text(title)}: loss {depth:.3f} → {curve[-1]['loss_mean']:.3f} "
                f"at σ = {curve[-1]['sigma']:g}, "
                f"independent student {base_depth:.3f} → {base[-1]['loss_mean']:.3f}")
        if max(depth, base_depth) > 2 * min(depth, base_depth):
            lines.append(f"{head} — not comparable: minima of different depth")
        else:
            lines.append(f"{head} — {'flatter, as the paper found' if rise < base_rise else 'not flatter'}")
    return lines


def _jsonable(analysis: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in analysis.items() if k != "relevance"}


def _rate_lines(comparison: Comparison, baseline: str, put) -> list[str]:
    """The IEP paper's Table 1: every method at every sample rate."""
    by_rate = comparison.by_rate
    put("figures/rates.png", figures.rate_lines(by_rate, comparison.teacher_row.get("test_error")))
    lines = ["## Test accuracy (%) per sample rate, in the form of the IEP paper's Table 1", "",
             "The teacher trained on all the training images; each student on the given share of them "
             "(the same images for every method and seed; a lower rate's images are among a higher one's).", "",
             rate_table(by_rate), "Mean ± sample standard deviation over the seeds.", "",
             "![accuracy per sample rate](figures/rates.png)", "",
             "The IEP paper's claims, each IEP entry against the methods that are not IEP:", ""]
    rivals = [e.title for e in comparison.config.methods if e.name != "iep"]
    for entry in comparison.config.methods:
        if entry.name != "iep":
            continue
        for check in rate_claims(by_rate, entry.title, baseline, rivals):
            claim = markdown_text(check["claim"])
            if check["holds"] is None:
                lines.append(f"- {claim}: not measured")
                continue
            word = "**yes**" if check["holds"] else "**no**"
            if "gains" in check:
                gains = ", ".join(f"{g:+.2f} at {r}" for r, g in check["gains"].items())
                lines.append(f"- {claim}: {word} (accuracy points over {markdown_text(baseline)}: {gains}; "
                             "compare the difference with the seed-to-seed spread in the table)")
            else:
                paired = check["paired"]
                lines.append(f"- {claim}: **{paired['verdict'] or 'not measured'}** on the paired seed interval, "
                             f"{interval_text(paired, 'accuracy points')} (means {check['gap']:+.2f})")
    lines.append("")
    return lines


def _iep_lines(comparison: Comparison, knowledge: Mapping[str, Mapping[str, Any]], put) -> list[str]:
    """Fig. 5 and how close each student's IEP knowledge comes to the teacher's."""
    lines = ["## IEP knowledge (the IEP paper's Fig. 5)", ""]
    for title, k in knowledge.items():
        name = label_folder(title)
        maps = put(f"figures/iep_{name}_knowledge.png", iep_figures.knowledge_maps(k))
        scatter = put(f"figures/iep_{name}_components.png", iep_figures.component_scatter(k))
        losses = ", ".join(f"{v:.4f}" for v in k["mpnn_losses"]) or "not recorded"
        lines += [f"### {markdown_text(title)}", "",
                  f"Sensing points {', '.join(k['points'])}; seed {comparison.config.seeds[0]}; "
                  f"{len(k['labels'])} test images sorted by class. MPNN loss on the teacher per epoch "
                  f"(Eq. 13, summed over the pairs): {losses}.", "",
                  f"![A and K_alt]({maps})", "", f"![compressed components]({scatter})", ""]
        if k["distances"]:
            lines += ["How far each student's knowledge is from the teacher's on these images, through the "
                      "same statistics and MPNN (lower is closer):", "",
                      "| student | L_int (Eq. 18) | L_alt (Eq. 19) |", "|---|---|---|",
                      *(f"| {markdown_text(t)} | {d['L_int']:.4f} | {d['L_alt']:.4f} |"
                        for t, d in k["distances"].items()), ""]
    return lines


def _explain_lines(comparison: Comparison, explained: Mapping[str, Any], put) -> list[str]:
    """The knowledge points of every method (``kdlens.compare.explain``): the
    table, the λ-accuracy figure and the three hypotheses per method."""
    baseline, layer = explained["baseline"], explained["layer"]
    errors = {title: error_stats(per_seed) for title, per_seed in comparison.results.items()}
    rows = {**explained["methods"], **explained["references"]}
    thinned = any(summary.get("thinned") for summary in explained["methods"].values())
    lines = ["## Knowledge points per method", "",
             f"Measured at `{layer}` with the {explained['estimator']} estimator on {explained['samples']} training "
             f"images of the students (the same for every network), for the students of seed {explained['seed']}, "
             "the teacher at its last checkpoint and the teacher's architecture at its random initial weights. "
             "N_fg, N_bg and λ at the last checkpoint (Sec. 3.2); D_mean, D_var (Eq. 8) and ρ (Eq. 9) over the "
             "checkpoints measured"
             + (f" ({explained['max_epochs']} per student, evenly spaced: a coarse reading of metrics defined over "
                "every epoch; `explain.max_epochs: null` measures all)" if thinned else "") + ".", ""]
    if not explained["foreground_known"]:
        lines += ["The data has no foreground masks: every unit counts as foreground, so N_bg is 0 and λ is 1 by "
                  "construction; read N_fg and the dynamics only.", ""]
    header = ["network", "test error % (all seeds)", f"accuracy % (seed {explained['seed']})", "N_fg ↑", "N_bg ↓",
              "λ ↑", "D_mean ↓", "D_var ↓", "ρ ↑", "H1", "H2", "H3"]
    cells, points = [], {}
    for title, summary in rows.items():
        verdicts = explained["verdicts"].get(title)
        cells.append([title, fmt_error(errors.get(title)), _number(summary.get("accuracy"), 100, 1),
                      *(_number(summary.get(k)) for k in ("n_fg", "n_bg", "lambda", "d_mean", "d_var", "rho")),
                      *(("–" if title in explained["references"] or title == baseline else verdicts[h]["verdict"])
                        for h in ("h1", "h2", "h3"))])
        if summary.get("lambda") is not None and summary.get("accuracy") is not None:
            points[title] = (summary["lambda"], 100 * summary["accuracy"])
    lines += [markdown_table(header, cells),
              "H1: more knowledge points (N_fg and λ higher), H2: learnt more simultaneously (D_mean and D_var "
              "lower), H3: fewer detours (ρ higher), each against the independent student "
              f"({markdown_text(baseline)}) on the paired bootstrap 95 % interval over the images: *holds* when it "
              "excludes 0 on the better side, *does not hold* on the worse side, *inconclusive* when it contains 0.",
              ""]
    if points:
        put("figures/lambda_accuracy.png", figures.lambda_accuracy(points, baseline, tuple(explained["references"])))
        lines += ["![lambda against accuracy](figures/lambda_accuracy.png)", ""]
        students = [points[t] for t in explained["methods"] if t in points]
        association = rank_association([x for x, _ in students], [y for _, y in students])
        if association is not None:
            r, p = association
            lines += [f"Across the {len(students)} students, Spearman's rank correlation of λ with test accuracy is "
                      f"{r:+.2f} (two-sided permutation p = {p:.3f}; the main paper's Fig. 2 finds higher λ with "
                      "higher accuracy).", ""]
    for title, verdicts in explained["verdicts"].items():
        lines.append(f"### {markdown_text(title)} against the independent student")
        lines += ["", *(f"- {markdown_text(v['sentence'])}" for v in verdicts.values()), ""]
    return lines


def rank_association(x: Sequence[float], y: Sequence[float], permutations: int = 10000,
                     seed: int = 0) -> Optional[tuple[float, float]]:
    """Spearman's rank correlation of ``x`` and ``y`` (ties get their mean rank) and
    its two-sided permutation p-value; None with fewer than 3 pairs or a constant side."""
    if len(x) < 3:
        return None

    def ranks(values: Sequence[float]) -> np.ndarray:
        order = np.argsort(values, kind="stable")
        out = np.empty(len(values))
        out[order] = np.arange(len(values), dtype=float)
        for value in set(values):  # ties: their mean rank
            tied = np.asarray(values) == value
            out[tied] = out[tied].mean()
        return out - out.mean()

    a, b = ranks(list(x)), ranks(list(y))
    scale = math.sqrt(float((a * a).sum() * (b * b).sum()))
    if scale == 0:
        return None
    r = float((a * b).sum()) / scale
    rng = np.random.default_rng(seed)
    shuffled = np.array([float((a * rng.permutation(b)).sum()) / scale for _ in range(permutations)])
    p = (1 + int((np.abs(shuffled) >= abs(r) - 1e-12).sum())) / (permutations + 1)
    return r, p


def _number(value: Any, factor: float = 1.0, digits: int = 2) -> str:
    return "–" if value is None else f"{factor * value:.{digits}f}"


def write_comparison_report(comparison: Comparison, analysis: Optional[Mapping[str, Any]],
                            out: str | Path, timing: Mapping[str, float],
                            iep: Optional[Mapping[str, Mapping[str, Any]]] = None,
                            explained: Optional[Mapping[str, Any]] = None) -> dict[str, Path]:
    out = Path(out)
    config = comparison.config
    baseline = next(e.title for e in config.methods if e.name == BASELINE)
    summary = {title: error_stats(per_seed) for title, per_seed in comparison.results.items()}
    teacher_error = comparison.teacher_row.get("test_error")
    written: dict[str, Path] = {}

    def put(rel: str, data: bytes | str) -> str:
        path = out / rel
        (atomic_write_bytes if isinstance(data, bytes) else atomic_write_text)(path, data)
        written[rel] = path
        return rel

    t1 = table1(_model_name(config.teacher_model), teacher_error, _model_name(config.model), summary)
    put("table.md", t1)
    put("results.csv", results_csv(comparison.by_rate))
    seeds = ", ".join(str(s) for s in config.seeds)
    data = config.data
    lines = [
        "# kdlens compare: distillation methods side by side",
        "",
        (f"Teacher {_model_name(config.teacher_model)} ({config.teacher.epochs} epochs), "
         if comparison.teacher is not None else "No teacher (no method needs one), ")
        + f"student {_model_name(config.model)} ({config.student.epochs} epochs, task loss + method loss, "
        f"trained jointly), feature methods at `{config.layer}`; data `{data.name}` at {data.image_size} px, "
        f"{len(comparison.train_set)} training images; seeds {seeds}. "
        f"Every student of a seed starts from the same weights and sees the same batches.",
        "",
        "## Test error (%), in the form of the IE-KD paper's Table 1",
        "",
        t1,
        "Mean ± sample standard deviation over the seeds.",
        "",
        "![test error per method](figures/errors.png)",
        "",
        "## Per seed",
        "",
        per_seed_table(comparison.results),
        "## The paper's claims on these numbers",
        "",
        "Each claim on the test-error difference paired over seeds (every method of a seed starts from the "
        "same weights and batches), with its 95 % Student t interval: **yes** when the interval lies above 0, "
        "**no** below 0, **inconclusive** when it contains 0 or there is one seed.",
        "",
        *_claim_lines(claims(comparison.results, baseline, config.ie_pairs)),
        *_untrained_lines(comparison.results),
        "",
    ]
    put("figures/errors.png", figures.error_bars(summary, teacher_error, config.ie_titles))
    if explained:
        lines += _explain_lines(comparison, explained, put)
        put("knowledge_points.json", json.dumps(explained, indent=2))
    if comparison.config.sample_rates:
        lines += _rate_lines(comparison, baseline, put)
    if iep:
        lines += _iep_lines(comparison, iep, put)
        put("iep.json", json.dumps({title: {key: k[key] for key in ("points", "distances", "mpnn_losses")}
                                    for title, k in iep.items()}, indent=2))
    if comparison.mutual:
        mutual = {title: {net: error_stats(per_seed) for net, per_seed in per_net.items()}
                  for title, per_net in comparison.mutual.items()}
        lines += ["## Mutual learning, in the form of Table 4 (test error %)", "",
                  table4(_model_name(config.model), _model_name(config.teacher_model), mutual),
                  "Independent: each network trained alone with the student schedule.", ""]
        ie_dml = [t for t in mutual if t not in ("Independent",)]
        for title in ie_dml:
            for net in ("net1", "net2"):
                check = paired_seed_interval(comparison.mutual[title][net], comparison.mutual["Independent"][net])
                if check["verdict"] is not None:
                    lines.append(f"- {markdown_text(title)} {net} beats the independent {net}: "
                                 f"**{check['verdict']}**, {interval_text(check)}")
        lines.append("")
    if analysis:
        lines += ["## The students under the IE-KD paper's analysis tools (sec. 4.7)", "",
                  f"Seed {analysis['seed']}, {analysis['samples']} training images, layer `{analysis['layer']}`.", ""]
        if analysis.get("relevance"):
            put("figures/relevance.png", figures.relevance_grid(analysis["relevance"]))
            lines += ["![LRP heatmaps](figures/relevance.png)", "",
                      "LRP (Captum, epsilon rule) of the predicted class; `inh.`/`exp.` keep only the relevance "
                      "that flows through the inheritance/exploration channels (Fig. 1, 3).", ""]
        if analysis.get("cka"):
            put("figures/cka.png", figures.cka_bars(analysis["cka"]))
            lines += ["![CKA](figures/cka.png)", ""]
            for title, values in analysis["cka"].items():
                lower = values["ie"] < values["independent"]
                lines.append(f"- {markdown_text(title)}: CKA(inh, exp) {values['ie']:.3f} "
                             f"vs independent {values['independent']:.3f}"
                             f" — {'more diverse, as the paper found' if lower else 'not more diverse (the paper found lower CKA)'}")
            lines.append("")
        if analysis.get("active_neurons"):
            put("figures/active_neurons.png", figures.active_neuron_bars(analysis["active_neurons"]))
            lines += ["![active neurons](figures/active_neurons.png)", "",
                      "Active neurons: the smallest number of directions holding "
                      f"{config.analysis.energy:.0%} of the energy of the loss gradient at the layer "
                      "(after Cui et al. 2019; `kdlens.probes.active_neurons`).", ""]
        if analysis.get("sharpness"):
            put("figures/sharpness.png", figures.sharpness_lines(analysis["sharpness"], config.ie_titles))
            lines += ["![sharpness](figures/sharpness.png)", ""]
            base = analysis["sharpness"].get(baseline)
            if base:
                lines += _sharpness_lines(analysis["sharpness"], baseline, config.ie_titles)
                lines.append("")
        atomic_write_json(out / "analysis.json", _jsonable(analysis))
        written["analysis.json"] = out / "analysis.json"
    recorded = comparison.teacher_row.get("seconds", 0.0) + sum(
        row.get("seconds", 0.0) for results in comparison.by_rate.values()
        for per_seed in results.values() for row in per_seed.values())
    lines += ["## Timing", "",
              *(f"- {k.replace('_s', '').replace('_', ' ')}: {v / 60:.1f} min" for k, v in timing.items()),
              f"- training epochs recorded in the checkpoints (teacher and students, without evaluation): "
              f"{recorded / 60:.1f} min", ""]
    put("compare.md", "\n".join(lines))
    return written
