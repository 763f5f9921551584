"""The figure of ``kdlens validate``: knowledge points on planted knowledge.

One row per network (object only, background cue, random weights); per image
the image with the object outline, then each estimator's entropy map with its
knowledge points boxed.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np


def _cell_bounds(size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    bins = np.arange(size) * grid // size  # the same cells as grid_units
    return np.searchsorted(bins, np.arange(grid), "left"), np.searchsorted(bins, np.arange(grid), "right")


def maps_figure(panels: dict[str, dict[str, Any]], grid: int, max_samples: int,
                networks: Sequence[str], estimators: Sequence[str]) -> bytes:
    """One row per network; per image: the image with the object outline, then
    each estimator's entropy map (dark = low entropy = information kept) with
    its foreground knowledge points boxed orange, background ones blue."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    fg_colour, bg_colour, mask_colour = (1.0, 0.35, 0.0), (0.0, 0.55, 1.0), "yellow"
    networks = [n for n in networks if n in panels]
    k = min(max_samples, min((len(panels[n]["images"]) for n in networks), default=0))
    k = max(k, 1)
    per = 1 + len(estimators)
    fig = Figure(figsize=(1.9 * k * per, 2.25 * len(networks) + 1.0))
    axes = fig.subplots(len(networks), k * per, squeeze=False)
    for r, network in enumerate(networks):
        panel = panels[network]
        for i in range(k):
            if i >= len(panel["images"]):
                continue
            image = np.clip(np.transpose(panel["images"][i], (1, 2, 0)), 0, 1)
            height, width = image.shape[:2]
            rows, cols = _cell_bounds(height, grid), _cell_bounds(width, grid)
            mask = panel["masks"][i]
            ax = axes[r, i * per]
            ax.imshow(image)
            ax.set_title(f"sample {panel['indices'][i]}", fontsize=8)
            if i == 0:
                ax.set_ylabel(network, fontsize=9)
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=mask_colour, linewidths=1.0)
            for e, estimator in enumerate(estimators, start=1):
                ax = axes[r, i * per + e]
                data = panel[estimator]
                entropy = data["entropy"][i].reshape(grid, grid)
                pixels = entropy[(np.arange(height) * grid) // height][:, (np.arange(width) * grid) // width]
                ax.imshow(pixels, cmap="gray", interpolation="nearest")
                points, foreground = data["points"][i].reshape(grid, grid), data["foreground"][i].reshape(grid, grid)
                for cell_r, cell_c in zip(*np.nonzero(points)):
                    (r0, r1), (c0, c1) = (rows[0][cell_r], rows[1][cell_r]), (cols[0][cell_c], cols[1][cell_c])
                    colour = fg_colour if foreground[cell_r, cell_c] else bg_colour
                    ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False,
                                           edgecolor=colour, linewidth=1.0))
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=mask_colour, linewidths=0.8)
                if data["defined"][i]:
                    n_fg, n_bg = int((points & foreground).sum()), int((points & ~foreground).sum())
                    ax.set_title(f"{estimator}\nN_fg {n_fg}, N_bg {n_bg}", fontsize=8)
                else:
                    ax.set_title(f"{estimator}\nundefined", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("kdlens validate: knowledge points on planted knowledge "
                 "(entropy maps: dark = information kept)", fontsize=10)
    fig.legend(handles=[Patch(facecolor="none", edgecolor=fg_colour, label="foreground knowledge point"),
                        Patch(facecolor="none", edgecolor=bg_colour, label="background knowledge point"),
                        Patch(facecolor="none", edgecolor=mask_colour, label="object outline")],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
