"""The figure of ``kdlens validate --modality points``: knowledge points on
planted knowledge in point clouds.

The point-cloud counterpart of :func:`kdlens.report.validation_maps.maps_figure`:
one row per network (object only, background cue, random weights); per cloud
the cloud with the object's points orange, then one 3-D scatter per estimator
with every point coloured by its entropy and the knowledge points ringed, as
:func:`kdlens.report.point_maps.point_cloud_maps` draws them (its view, box,
colours and sizes).  Each estimator has its own colour scale, shared by the
networks (the two estimators' entropies are not on one scale), so a colour
compares the networks under one estimator.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the "3d" projection)

from kdlens.report.figures import _no_data, _png
from kdlens.report.point_maps import (
    ENTROPY_CMAP,
    _entropy_norm,
    _per_point,
    draw_cloud,
    draw_entropy,
    draw_knowledge_points,
    legend_handles,
)


def point_maps_figure(panels: dict[str, dict[str, Any]], max_samples: int, networks: Sequence[str],
                      estimators: Sequence[str], layer: str = "fc1") -> bytes:
    """PNG bytes.  ``panels``: {network: {"clouds": (B, P, 3), "masks": (B, P)
    bool, "indices": [B sample indices], estimator: {"entropy": (B, P),
    "points": (B, P) bool, "foreground": (B, P) bool, "defined": (B,) bool}}}."""
    networks = [n for n in networks if n in panels]
    k = min(max_samples, min((len(panels[n]["clouds"]) for n in networks), default=0))
    if k < 1:
        fig = Figure(figsize=(6.0, 2.0))
        _no_data(fig.add_subplot(1, 1, 1), "no clouds to draw")
        return _png(fig)
    per = 1 + len(estimators)
    # one colour scale per estimator, over every network's shown clouds
    norms = {e: _entropy_norm({n: panels[n][e] for n in networks}, networks, k) for e in estimators}
    fig = Figure(figsize=(2.4 * k * per + 1.2, 2.6 * len(networks) + 1.0))
    axes = fig.subplots(len(networks), k * per, squeeze=False,
                        subplot_kw={"projection": "3d", "computed_zorder": False})
    for r, network in enumerate(networks):
        panel = panels[network]
        for i in range(k):
            xyz = np.asarray(panel["clouds"][i], dtype=float)[:, :3]
            n_points = xyz.shape[0]
            ax = axes[r, i * per]
            draw_cloud(ax, xyz, _per_point(np.asarray(panel["masks"]), i, n_points))
            ax.set_title(f"{network}\nsample {panel['indices'][i]}", fontsize=8)
            for e, estimator in enumerate(estimators, start=1):
                ax = axes[r, i * per + e]
                data = panel[estimator]
                entropy = _per_point(np.asarray(data["entropy"]), i, n_points)
                fill = draw_entropy(ax, xyz, entropy, norms[estimator])
                points = _per_point(np.asarray(data["points"]), i, n_points)
                foreground = _per_point(np.asarray(data["foreground"]), i, n_points)
                n_fg, n_bg = draw_knowledge_points(ax, xyz, fill, points, foreground)
                if data["defined"][i]:
                    ax.set_title(f"{estimator}\nN_fg {n_fg}, N_bg {n_bg}", fontsize=8)
                else:
                    ax.set_title(f"{estimator}\nundefined", fontsize=8)
    height, width = fig.get_figheight(), fig.get_figwidth()
    fig.suptitle(f"kdlens validate: knowledge points on planted knowledge in point clouds, layer {layer} "
                 "(dark = low entropy = information kept)", fontsize=10, y=1.0 - 0.12 / height)
    fig.legend(
        handles=legend_handles("cloud column"),
        loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0),
    )
    right = 1.0 - 1.0 / width  # room for the colour bars
    fig.subplots_adjust(left=0.01, right=right - 0.01, bottom=0.35 / height, top=1.0 - 0.7 / height,
                        wspace=0.05, hspace=0.25)
    shown = [e for e in estimators if norms[e] is not None]
    for j, estimator in enumerate(shown):
        span = 0.6 / len(shown)
        bar = fig.add_axes((right + 0.005, 0.8 - (j + 1) * span + 0.03, 0.010, span - 0.06))
        fig.colorbar(ScalarMappable(norm=norms[estimator], cmap=ENTROPY_CMAP), cax=bar)
        bar.set_ylabel(f"H_i, {estimator}", fontsize=7)
        bar.tick_params(labelsize=6)
    return _png(fig)
