"""The report's figures, each returned as PNG bytes (the caller writes them atomically).

* :func:`knowledge_point_maps`  - the paper's Fig. 3 / Fig. 6: where the
  knowledge points of teacher, student and baseline lie on the image.
* :func:`points_vs_distance`    - Fig. 4: N_fg and N_bg against the weight distance.
* :func:`lambda_vs_accuracy`    - Fig. 2: λ against test accuracy over the epochs.
* :func:`metric_bars`           - the six metrics of Table 5, student vs baseline.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather
than through pyplot, so no global backend or pyplot state is touched (the
library may run inside other people's processes) and nothing leaks memory
when many reports are drawn.  Missing values (None) are skipped, never plotted
as zero.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from kdlens.report.tables import METRICS, fmt, number

COLOURS = {"teacher": "tab:green", "student": "tab:blue", "baseline": "tab:orange"}
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
    # the same cell boundaries as kdlens.discarding.units.grid_units (floor(i * g / size))
    g_rows, g_cols = grid.shape
    return grid[(np.arange(height) * g_rows) // height][:, (np.arange(width) * g_cols) // width]


def _outline(ax, mask: Optional[np.ndarray]) -> None:
    # a contour needs both values present; an all-object or all-background mask has no outline
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="yellow", linewidths=1.2)


def knowledge_point_maps(layer: str, maps: Mapping[str, Any], max_samples: int = 6) -> bytes:
    """Fig. 3 / Fig. 6: one row per sample (up to ``max_samples``): the image with
    the object outline, then for each of teacher, student, baseline the image
    with its foreground knowledge points shaded orange and background ones blue
    (the final epoch; grid cells upsampled to the image), titled N_fg / N_bg."""
    images, masks = _np(maps.get("images")), _np(maps.get("masks"))
    roles = [r for r in ("teacher", "student", "baseline") if maps.get(r) is not None]
    n = 0 if images is None else min(len(images), max_samples)
    fig = Figure(figsize=(2.3 * (1 + len(roles)), 2.6 * max(n, 1) + 0.8))
    if n == 0:
        _no_data(fig.add_subplot(1, 1, 1), f"no knowledge-point maps for {layer}")
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
                ax.set_title(f"{role}: –" if i == 0 else "–", fontsize=9)
            else:
                pts, fg = points[i].astype(bool), foreground[i].astype(bool)
                overlay = np.zeros((height, width, 4))
                overlay[_upsample(pts & fg, height, width)] = (*FG_COLOUR, OVERLAY_ALPHA)
                overlay[_upsample(pts & ~fg, height, width)] = (*BG_COLOUR, OVERLAY_ALPHA)
                ax.imshow(overlay)
                counts = f"N_fg = {int((pts & fg).sum())}, N_bg = {int((pts & ~fg).sum())}"
                ax.set_title(f"{role}\n{counts}" if i == 0 else counts, fontsize=9)  # role named once per column
            _outline(ax, mask)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Knowledge points at layer {layer} (cf. paper Fig. 3 / Fig. 6)", fontsize=11)
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


def points_vs_distance(layer: str, layer_data: Mapping[str, Any]) -> bytes:
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
    ax.set_title(f"Knowledge points vs weight distance at {layer} (cf. paper Fig. 4)")
    fig.tight_layout()
    return _png(fig)


def lambda_vs_accuracy(layer: str, layer_data: Mapping[str, Any]) -> bytes:
    """Fig. 2: λ (share of knowledge points on the foreground) against test
    accuracy, one trajectory over the epochs per model (first and last epoch
    annotated), the teacher as a single star."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    plotted = False
    for role in ("student", "baseline"):
        xs, ys, epochs = _series((layer_data.get(role) or {}).get("per_epoch"), "test_accuracy", "lambda")
        if not xs:
            continue
        xs = [100 * x for x in xs]
        ax.plot(xs, ys, "-", marker="o", markersize=4, color=COLOURS[role], label=role, alpha=0.85)
        for k in {0, len(xs) - 1}:
            ax.annotate(f"ep {epochs[k]}", (xs[k], ys[k]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color=COLOURS[role])
        plotted = True
    teacher = layer_data.get("teacher") or {}
    t_acc, t_lam = number(teacher.get("accuracy")), number(teacher.get("lambda"))
    if t_acc is not None and t_lam is not None:
        ax.plot([100 * t_acc], [t_lam], "*", markersize=16, color=COLOURS["teacher"], label="teacher (final)")
        plotted = True
    if not plotted:
        _no_data(ax, "no λ / accuracy values")
    else:
        ax.set_xlabel("test accuracy (%)")
        ax.set_ylabel("λ = N_fg / (N_fg + N_bg)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax.set_title(f"λ vs test accuracy over epochs at {layer} (cf. paper Fig. 2)")
    fig.tight_layout()
    return _png(fig)


def metric_bars(layer: str, layer_data: Mapping[str, Any]) -> bytes:
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
    fig.suptitle(f"Student vs baseline at {layer} (cf. paper Table 5)", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return _png(fig)
