"""The comparison's figures, each returned as PNG bytes (drawn on a
``matplotlib.figure.Figure`` with an Agg canvas, no pyplot state):

* :func:`error_bars`        - Table 1 as a picture: test error per method, mean ± std.
* :func:`relevance_grid`    - IE-KD Fig. 1 / 3: LRP heatmaps per model and part.
* :func:`cka_bars`          - Fig. 4(a): CKA of the inheritance vs exploration channels.
* :func:`active_neuron_bars` - Fig. 4(b): the number of active neurons.
* :func:`sharpness_lines`   - Fig. 4(c): training loss against the weight-noise scale.
* :func:`rate_lines`        - the IEP paper's Table 1 as a picture: accuracy against the sample rate.
* :func:`lambda_accuracy`   - the main paper's Fig. 2 over methods: λ against test accuracy.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np
from matplotlib.figure import Figure

from kdlens.compare.tables import accuracy_stats, rate_percent
from kdlens.report.figures import _png


def error_bars(summary: Mapping[str, Mapping[str, Any]], teacher_error: float | None,
               ie_titles: Collection[str] = ()) -> bytes:
    """Test error per method: the first (the independent student) in orange, IE-KD variants in blue."""
    titles = [t for t in summary if summary[t].get("mean") is not None]
    means = [summary[t]["mean"] for t in titles]
    stds = [summary[t].get("std") or 0.0 for t in titles]
    fig = Figure(figsize=(1.0 + 0.8 * len(titles), 3.4))
    ax = fig.add_subplot()
    colours = ["tab:orange" if i == 0 else ("tab:blue" if t in ie_titles else "tab:gray")
               for i, t in enumerate(titles)]
    ax.bar(range(len(titles)), means, yerr=stds, color=colours, capsize=3)
    if teacher_error is not None:
        ax.axhline(teacher_error, color="tab:green", linestyle="--", label=f"teacher {teacher_error:.1f}%")
        ax.legend(loc="upper right", fontsize=8)
    if means:
        low = min(means + ([teacher_error] if teacher_error is not None else []))
        ax.set_ylim(max(0.0, low - 5), max(m + s for m, s in zip(means, stds)) + 2)
    ax.set_xticks(range(len(titles)), titles, rotation=30, ha="right")
    ax.set_ylabel("test error (%)")
    ax.set_title("test error of the student per method (mean ± std over seeds)", fontsize=9)
    return _png(fig)


def relevance_grid(relevance: Mapping[str, Any]) -> bytes:
    """Rows: images; columns: the image, then each model's (or part's) LRP map,
    red positive and blue negative relevance, each map scaled to its own max."""
    images = np.asarray(relevance["images"]).transpose(0, 2, 3, 1)
    maps = relevance["maps"]
    classes, labels = relevance["classes"], relevance["labels"]
    predictions = relevance.get("predictions", {})
    titles = list(maps)
    rows, cols = len(images), 1 + len(titles)
    fig = Figure(figsize=(1.5 * cols, 1.5 * rows + 0.4))
    for r in range(rows):
        ax = fig.add_subplot(rows, cols, r * cols + 1)
        ax.imshow(images[r])
        ax.set_axis_off()
        ax.set_title(f"GT: {classes[labels[r]]}", fontsize=7)
        for c, title in enumerate(titles):
            heat = np.asarray(maps[title][r], dtype=float)
            scale = np.abs(heat).max() or 1.0
            ax = fig.add_subplot(rows, cols, r * cols + 2 + c)
            ax.imshow(heat / scale, cmap="bwr", vmin=-1, vmax=1)
            ax.set_axis_off()
            predicted = predictions.get(title)
            suffix = f"\n→ {classes[predicted[r]]}" if predicted else ""
            ax.set_title((title if r == 0 else "") + suffix, fontsize=7)
    fig.suptitle("LRP relevance (red +, blue −) of the predicted class", fontsize=9)
    return _png(fig)


def cka_bars(cka: Mapping[str, Mapping[str, float]]) -> bytes:
    titles = list(cka)
    fig = Figure(figsize=(1.5 + 1.2 * max(1, len(titles)), 3.2))
    ax = fig.add_subplot()
    x = np.arange(len(titles))
    ax.bar(x - 0.2, [cka[t]["independent"] for t in titles], 0.4, label="independent student", color="tab:orange")
    ax.bar(x + 0.2, [cka[t]["ie"] for t in titles], 0.4, label="IE-KD student", color="tab:blue")
    ax.set_xticks(x, titles)
    ax.set_ylabel("linear CKA (inheritance vs exploration)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Fig. 4(a): similarity of the two channel parts", fontsize=9)
    return _png(fig)


def active_neuron_bars(counts: Mapping[str, Any]) -> bytes:
    labels, values, colours = [], [], []
    for title, value in counts.items():
        if isinstance(value, Mapping):
            for part, count in value.items():
                labels.append(f"{title}\n{part.replace('_', ' ')}")
                values.append(count)
                colours.append("tab:orange" if part.startswith("independent") else "tab:blue")
        else:
            labels.append(title)
            values.append(value)
            colours.append("tab:green" if title == "Teacher" else "tab:orange")
    fig = Figure(figsize=(1.0 + 0.9 * len(labels), 3.4))
    ax = fig.add_subplot()
    ax.bar(range(len(labels)), values, color=colours)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("active neurons")
    ax.set_title("Fig. 4(b): number of active neurons at the distilled layer", fontsize=9)
    return _png(fig)


def sharpness_lines(curves: Mapping[str, list[Mapping[str, float]]], ie_titles: Collection[str] = ()) -> bytes:
    """Training loss against weight noise per method; IE-KD variants drawn solid, the rest dashed."""
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot()
    for title, curve in curves.items():
        sigma = [p["sigma"] for p in curve]
        mean = np.array([p["loss_mean"] for p in curve])
        std = np.array([p["loss_std"] for p in curve])
        style = "-" if title in ie_titles else "--"
        ax.plot(sigma, mean, style, marker="o", markersize=3, label=title)
        ax.fill_between(sigma, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("σ of the Gaussian noise added to every weight")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Fig. 4(c): sharpness of the converged minimum", fontsize=9)
    return _png(fig)


def rate_lines(by_rate: Mapping[str, Mapping[str, Mapping[str, Any]]], teacher_error: float | None) -> bytes:
    """Test accuracy (mean ± std over seeds) of each method against the
    students' sample rate, on a log axis."""
    rates = sorted(by_rate, key=rate_percent)
    titles = list(dict.fromkeys(t for results in by_rate.values() for t in results))
    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.add_subplot()
    for i, title in enumerate(titles):
        points = [(rate_percent(r), accuracy_stats(by_rate[r][title])) for r in rates if title in by_rate[r]]
        points = [(x, s) for x, s in points if s["mean"] is not None]
        if not points:
            continue
        style = dict(color="tab:orange", linestyle="--") if i == 0 else {}
        ax.errorbar([x for x, _ in points], [s["mean"] for _, s in points],
                    yerr=[s["std"] or 0.0 for _, s in points], marker="o", capsize=3, label=title, **style)
    if teacher_error is not None:
        ax.axhline(100.0 - teacher_error, color="tab:green", linestyle=":", label="teacher (all data)")
    ax.set_xscale("log")
    ticks = [rate_percent(r) for r in rates]
    ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("the students' share of the training set")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("accuracy per sample rate (mean ± std over seeds)", fontsize=9)
    return _png(fig)


def lambda_accuracy(points: Mapping[str, tuple[float, float]], baseline: str, references: Collection[str] = ()) -> bytes:
    """λ (x) against test accuracy in % (y), one labelled point per method: the
    independent student in orange, the teacher and random weights in green and
    grey; a method with λ undefined is left out."""
    fig = Figure(figsize=(5.2, 4.0))
    ax = fig.add_subplot()
    for title, (ratio, accuracy) in points.items():
        colour = "tab:orange" if title == baseline else "tab:green" if title == "Teacher" else \
            "tab:gray" if title in references else "tab:blue"
        ax.scatter([ratio], [accuracy], color=colour, s=28, zorder=3)
        ax.annotate(title, (ratio, accuracy), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("λ = N_fg / (N_fg + N_bg)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title("knowledge quality against accuracy, per method (the paper's Fig. 2 over methods)", fontsize=8)
    return _png(fig)
