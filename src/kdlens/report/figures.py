"""The report's figures, each returned as PNG bytes (the caller writes them atomically).

* :func:`knowledge_point_maps`  - the paper's Fig. 3 / Fig. 6: where the
  knowledge points of teacher, student, baseline (and the random-weights
  reference) lie on the image.
* :func:`points_vs_distance`    - Fig. 4: N_fg and N_bg against the weight distance.
* :func:`lambda_vs_accuracy`    - Fig. 2: λ against accuracy over the epochs (the
  student's distillation epochs read through the teacher's upper layers).
* :func:`metric_bars`           - the six metrics of Table 5, student vs baseline.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather
than through pyplot, so no global backend or pyplot state is touched (the
library may run inside other people's processes) and nothing leaks memory
when many reports are drawn.  Missing values (None) are skipped, never plotted
as zero.  Each figure shows one knowledge-point estimator, named in its title.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from kdlens.report.tables import METRICS, fmt, number

COLOURS = {"teacher": "tab:green", "student": "tab:blue", "baseline": "tab:orange", "random": "tab:grey"}
MAP_ROLES = ("teacher", "student", "baseline", "random")
ROLE_TITLES = {"random": "random weights"}
FG_COLOUR = (1.0, 0.35, 0.0)  # foreground knowledge points: orange-red
BG_COLOUR = (0.0, 0.55, 1.0)  # background knowledge points: blue
OVERLAY_ALPHA = 0.55
DPI = 110


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _np(value: Any) -> Optional[np.ndarray]:
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    return np.asarray(value)


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    # the same cell boundaries as kdlens.modalities.units.grid_units (floor(i * g / size))
    g_rows, g_cols = grid.shape
    return grid[(np.arange(height) * g_rows) // height][:, (np.arange(width) * g_cols) // width]


def _outline(ax, mask: Optional[np.ndarray]) -> None:
    # a contour needs both values present; an all-object or all-background mask has no outline
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="yellow", linewidths=1.2)


def _where(layer: str, estimator: Optional[str]) -> str:
    return f"{layer}" + (f" ({estimator} estimator)" if estimator else "")


def knowledge_point_maps(layer: str, maps: Mapping[str, Any], max_samples: int = 6,
                         estimator: Optional[str] = None) -> bytes:
    """Fig. 3 / Fig. 6: one row per sample (up to ``max_samples``): the image with
    the object outline, then for each of teacher, student, baseline and random
    (those present in ``maps``; random = the teacher's initial weights) the image
    with its foreground knowledge points shaded orange and background ones blue
    (the final epoch; grid cells upsampled to the image), titled N_fg / N_bg."""
    images, masks = _np(maps.get("images")), _np(maps.get("masks"))
    roles = [r for r in MAP_ROLES if maps.get(r) is not None]
    n = 0 if images is None else min(len(images), max_samples)
    fig = Figure(figsize=(2.3 * (1 + len(roles)), 2.6 * max(n, 1) + 0.8))
    if n == 0:
        _no_data(fig.add_subplot(1, 1, 1), f"no knowledge-point maps for {_where(layer, estimator)}")
        return _png(fig)
    axes = fig.subplots(n, 1 + len(roles), squeeze=False)
    for i in range(n):
        image = images[i]
        image = np.repeat(image, 3, 0) if image.shape[0] == 1 else image
        image = np.clip(np.transpose(image[:3], (1, 2, 0)).astype(float), 0, 1)
        height, width = image.shape[:2]
        mask = None if masks is None else masks[i].astype(bool)
        ax = axes[i, 0]
        ax.imshow(image)
        _outline(ax, mask)
        ax.set_title(f"{'image, object outline' if i == 0 else ''}\nsample {i}", fontsize=9)
        for j, role in enumerate(roles, start=1):
            ax = axes[i, j]
            ax.imshow(image)
            points = _np(maps[role].get("points"))
            foreground = _np(maps[role].get("foreground"))
            if points is None or foreground is None:
                ax.set_title(f"{ROLE_TITLES.get(role, role)}: –" if i == 0 else "–", fontsize=9)
            else:
                pts, fg = points[i].astype(bool), foreground[i].astype(bool)
                overlay = np.zeros((height, width, 4))
                overlay[_upsample(pts & fg, height, width)] = (*FG_COLOUR, OVERLAY_ALPHA)
                overlay[_upsample(pts & ~fg, height, width)] = (*BG_COLOUR, OVERLAY_ALPHA)
                ax.imshow(overlay)
                counts = f"N_fg = {int((pts & fg).sum())}, N_bg = {int((pts & ~fg).sum())}"
                title = f"{ROLE_TITLES.get(role, role)}\n{counts}" if i == 0 else counts  # role named once per column
                ax.set_title(title, fontsize=9)
            _outline(ax, mask)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Knowledge points at layer {_where(layer, estimator)} (cf. paper Fig. 3 / Fig. 6)", fontsize=11)
    fig.legend(
        handles=[Patch(color=FG_COLOUR, alpha=OVERLAY_ALPHA, label="foreground knowledge point"),
                 Patch(color=BG_COLOUR, alpha=OVERLAY_ALPHA, label="background knowledge point"),
                 Patch(facecolor="none", edgecolor="yellow", label="object outline")],
        loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.01),
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return _png(fig)


def _series(per_epoch: Any, x_key: str, y_key: str) -> tuple[list, list, list]:
    xs, ys, epochs = [], [], []
    for row in per_epoch or []:
        x, y = number(row.get(x_key)), number(row.get(y_key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
            epochs.append(row.get("epoch"))
    return xs, ys, epochs


def points_vs_distance(layer: str, layer_data: Mapping[str, Any], estimator: Optional[str] = None) -> bytes:
    """Fig. 4: mean N_fg (solid) and N_bg (dashed) against the cumulative weight
    distance sum_k ||w_k - w_{k-1}|| / ||w_0||, student vs baseline, a marker per
    analysed epoch; a dotted vertical line marks each model's D_mean (Eq. 8)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    plotted = False
    for role in ("student", "baseline"):
        summary = layer_data.get(role) or {}
        colour = COLOURS[role]
        for key, style, label in (("n_fg", "-", "N_fg"), ("n_bg", "--", "N_bg")):
            xs, ys, _ = _series(summary.get("per_epoch"), "weight_distance", key)
            if xs:
                ax.plot(xs, ys, style, marker="o", markersize=4, color=colour, label=f"{role} {label}")
                plotted = True
        d_mean = number(summary.get("d_mean"))
        if d_mean is not None:
            ax.axvline(d_mean, color=colour, linestyle=":", linewidth=1.2, label=f"{role} D_mean = {fmt(d_mean)}")
    if not plotted:
        _no_data(ax, "no per-epoch knowledge points")
    else:
        ax.set_xlabel("weight distance  Σ‖w_k − w_(k−1)‖ / ‖w_0‖")
        ax.set_ylabel("knowledge points per sample (mean)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax.set_title(f"Knowledge points vs weight distance at {_where(layer, estimator)} (cf. paper Fig. 4)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _accuracy_series(per_epoch: Any, mimic: bool) -> tuple[list, list, list, list]:
    """(accuracy, λ, epoch, read through the teacher?) per epoch with both values;
    with ``mimic`` an epoch's ``mimic_accuracy`` replaces its test accuracy where present."""
    xs, ys, epochs, through = [], [], [], []
    for row in per_epoch or []:
        m = number(row.get("mimic_accuracy")) if mimic else None
        x = m if m is not None else number(row.get("test_accuracy"))
        y = number(row.get("lambda"))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
            epochs.append(row.get("epoch"))
            through.append(m is not None)
    return xs, ys, epochs, through


def lambda_vs_accuracy(layer: str, layer_data: Mapping[str, Any], distilled_layer: Optional[str] = None,
                       estimator: Optional[str] = None) -> bytes:
    """Fig. 2: λ (share of knowledge points on the foreground) against accuracy,
    one trajectory over the epochs per model (first and last epoch annotated),
    the teacher as a single star and the random initial weights as a cross.

    During its distillation epochs the student has no trained head of its own,
    so where ``mimic_accuracy`` is given its accuracy is that of its
    distilled-layer feature read through the teacher's layers above that layer
    (hollow markers, said on the figure); after them, its test accuracy."""
    fig = Figure(figsize=(7, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    plotted = mimicked = False
    for role in ("student", "baseline"):
        xs, ys, epochs, through = _accuracy_series((layer_data.get(role) or {}).get("per_epoch"), role == "student")
        if not xs:
            continue
        xs = [100 * x for x in xs]
        colour = COLOURS[role]
        ax.plot(xs, ys, "-", color=colour, label=role, alpha=0.85)
        own = [k for k, t in enumerate(through) if not t]
        read = [k for k, t in enumerate(through) if t]
        if own:
            ax.plot([xs[k] for k in own], [ys[k] for k in own], "o", markersize=4, color=colour)
        if read:
            mimicked = True
            ax.plot([xs[k] for k in read], [ys[k] for k in read], "o", markersize=5, markerfacecolor="white",
                    markeredgecolor=colour, label=f"{role} during distillation (through the teacher)")
        for k in {0, len(xs) - 1}:
            ax.annotate(f"ep {epochs[k]}", (xs[k], ys[k]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color=colour)
        plotted = True
    for role, marker, size, label in (("teacher", "*", 16, "teacher (final)"), ("random", "X", 10, "random weights")):
        summary = layer_data.get(role) or {}
        acc, lam = number(summary.get("accuracy")), number(summary.get("lambda"))
        if acc is not None and lam is not None:
            ax.plot([100 * acc], [lam], marker, markersize=size, color=COLOURS[role], label=label)
            plotted = True
    if not plotted:
        _no_data(ax, "no λ / accuracy values")
    else:
        ax.set_xlabel("accuracy (%)")
        ax.set_ylabel("λ = N_fg / (N_fg + N_bg)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if mimicked:
        above = f" above {distilled_layer}" if distilled_layer else " above the distilled layer"
        fig.text(0.5, 0.005, f"During distillation (hollow markers) the student's accuracy is read through the "
                             f"teacher's layers{above};\nafter it, the student's own test accuracy.",
                 ha="center", va="bottom", fontsize=8, color="dimgrey")
    ax.set_title(f"λ vs accuracy over epochs at {_where(layer, estimator)} (cf. paper Fig. 2)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if mimicked else 0, 1, 1))
    return _png(fig)


def metric_bars(layer: str, layer_data: Mapping[str, Any], estimator: Optional[str] = None) -> bytes:
    """The six metrics of Table 5, student vs baseline, one panel each (their
    scales differ by orders of magnitude); arrows say which way is better."""
    metrics = [m for m in METRICS if m[0] != "accuracy"]
    fig = Figure(figsize=(2.1 * len(metrics), 3.4))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (key, label, arrow, _) in zip(axes, metrics):
        for x, role in enumerate(("student", "baseline")):
            value = number((layer_data.get(role) or {}).get(key))
            if value is None:
                ax.text(x, 0, "–\nmissing", ha="center", va="bottom", fontsize=9, color="grey")
                continue
            ax.bar(x, value, color=COLOURS[role], width=0.6)
            ax.annotate(fmt(value, key), (x, value), textcoords="offset points", xytext=(0, 2),
                        ha="center", fontsize=8)
        ax.set_xticks([0, 1], ["S", "B"])
        ax.set_xlim(-0.7, 1.7)
        ax.margins(y=0.18)
        ax.set_title(f"{label} {arrow}", fontsize=10)
    axes[0].set_ylabel("value")
    fig.legend(handles=[Patch(color=COLOURS["student"], label="student (S)"),
                        Patch(color=COLOURS["baseline"], label="baseline (B)")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Student vs baseline at {_where(layer, estimator)} (cf. paper Table 5)", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return _png(fig)
