"""Knowledge-point maps for point clouds: the point-cloud counterpart of
:func:`kdlens.report.figures.knowledge_point_maps`.

On a cloud every point is an input unit, so instead of shading grid cells on an
image each cloud is drawn as a 3-D scatter: every point coloured by its entropy
H_i (how much of its information the layer discards), and the knowledge points
drawn larger with a ring - orange on the object, blue on the background.  This
shows at once where the knowledge points are and how far below the rest their
entropy lies.

The figure is built the same way as the other report figures (a bare
``Figure`` on an Agg canvas, no pyplot state) and shares their helpers,
role order and role titles, so the image and the cloud maps read alike.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the "3d" projection)

from kdlens.report.figures import BG_COLOUR, FG_COLOUR, MAP_ROLES, ROLE_TITLES, _no_data, _np, _png, _where

# Sequential grey, dark at the low end: low entropy = information kept = dark,
# so the knowledge points (low entropy by definition) are dark dots.  Grey
# rather than a coloured map because orange and blue are taken by the rings
# (a blue ring vanishes on viridis' dark blue end); it stops at a light grey
# so that the highest entropies stay visible on the light panes.
ENTROPY_CMAP = ListedColormap(colormaps["Greys_r"](np.linspace(0.0, 0.8, 256)), name="entropy_greys")
OBJECT_COLOUR = FG_COLOUR
BACKGROUND_COLOUR = (0.72, 0.72, 0.72)
# a point whose entropy is unknown / not finite: paler than any entropy shade
MISSING_COLOUR = (0.9, 0.9, 0.9)
POINT_SIZE = 3.0
KNOWLEDGE_POINT_SIZE = 22.0
RING_WIDTH = 1.0
# One fixed view and box for every panel, so the same point sits at the same
# place in every column and the roles can be compared by eye.  Clouds live in
# the unit sphere (kdlens.data.point_background.to_unit_sphere).
VIEW_ELEV, VIEW_AZIM = 20.0, -60.0
LIMIT = 1.0


def _per_point(value: Optional[np.ndarray], i: int, n_points: int) -> Optional[np.ndarray]:
    """Row ``i`` of an (N, P) per-point array, or None when it is missing or
    does not have one value per point of the cloud (so a malformed role is shown
    as missing rather than drawn against the wrong points)."""
    if value is None or value.ndim < 2 or i >= len(value):
        return None
    row = np.asarray(value[i]).reshape(-1)
    return row if row.shape[0] == n_points else None


def _entropy_norm(maps: Mapping[str, Any], roles: list[str], n: int) -> Optional[Normalize]:
    """One colour scale for the whole figure: the range of all finite entropies
    drawn (the shown samples, every role), so a colour means the same entropy
    in every panel.  None when no entropy is known at all."""
    values = []
    for role in roles:
        entropy = _np(maps[role].get("entropy"))
        if entropy is not None and entropy.ndim >= 1:
            chunk = np.asarray(entropy[:n], dtype=float).reshape(-1)
            values.append(chunk[np.isfinite(chunk)])
    values = np.concatenate(values) if values else np.empty(0)
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    if low == high:  # a constant entropy still needs a non-empty range
        low, high = low - 0.5, high + 0.5
    return Normalize(vmin=low, vmax=high)


def _setup(ax) -> None:
    ax.view_init(elev=VIEW_ELEV, azim=VIEW_AZIM)
    ax.set_xlim(-LIMIT, LIMIT)
    ax.set_ylim(-LIMIT, LIMIT)
    ax.set_zlim(-LIMIT, LIMIT)
    ax.set_box_aspect((1, 1, 1))
    ticks = [-LIMIT, 0.0, LIMIT]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_zticks(ticks)
    # the scale is the same everywhere; tick labels would only crowd the panels
    ax.set_xticklabels([])
    ax.set_yticklabels([])
    ax.set_zticklabels([])


def _entropy_colours(entropy: Optional[np.ndarray], n_points: int, norm: Optional[Normalize]) -> np.ndarray:
    colours = np.tile((*MISSING_COLOUR, 1.0), (n_points, 1))
    if entropy is None or norm is None:
        return colours
    entropy = entropy.astype(float)
    finite = np.isfinite(entropy)
    colours[finite] = ENTROPY_CMAP(norm(entropy[finite]))
    return colours


def draw_cloud(ax, xyz: np.ndarray, mask: Optional[np.ndarray]) -> None:
    """The cloud ``xyz`` (P, 3) on a 3-D axis, the object's points (``mask``) orange, the rest grey."""
    _setup(ax)
    colours = np.tile((*BACKGROUND_COLOUR, 1.0), (xyz.shape[0], 1))
    if mask is not None:
        colours[mask.astype(bool)] = (*OBJECT_COLOUR, 1.0)
    ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], s=POINT_SIZE, c=colours, linewidths=0, depthshade=False)


def draw_entropy(ax, xyz: np.ndarray, entropy: Optional[np.ndarray], norm: Optional[Normalize]) -> np.ndarray:
    """Every point of ``xyz`` coloured by its entropy; returns the colours."""
    _setup(ax)
    fill = _entropy_colours(entropy, xyz.shape[0], norm)
    # depthshade off: the colour must stay the entropy, not fade with depth
    ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], s=POINT_SIZE, c=fill, linewidths=0, depthshade=False)
    return fill


def draw_knowledge_points(ax, xyz: np.ndarray, fill: np.ndarray, points: np.ndarray,
                          foreground: np.ndarray) -> tuple[int, int]:
    """The knowledge points drawn larger, ringed orange (foreground) or blue
    (background), over :func:`draw_entropy`'s dots; returns (N_fg, N_bg)."""
    points, foreground = points.astype(bool), foreground.astype(bool)
    # drawn after the small dots (computed_zorder off) so no ring hides behind them
    for chosen, ring in ((points & foreground, FG_COLOUR), (points & ~foreground, BG_COLOUR)):
        if chosen.any():
            ax.scatter(xyz[chosen, 0], xyz[chosen, 1], xyz[chosen, 2], s=KNOWLEDGE_POINT_SIZE, c=fill[chosen],
                       edgecolors=[ring], linewidths=RING_WIDTH, depthshade=False)
    return int((points & foreground).sum()), int((points & ~foreground).sum())


def legend_handles(cloud_column: str) -> list[Line2D]:
    """The legend of a knowledge-point figure on clouds; ``cloud_column`` names
    where the object's points are shown."""
    return [Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor=FG_COLOUR,
                   label="foreground knowledge point"),
            Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor=BG_COLOUR,
                   label="background knowledge point"),
            Line2D([], [], marker="o", linestyle="", color=OBJECT_COLOUR, label=f"object point ({cloud_column})")]


def point_cloud_maps(layer: str, maps: Mapping[str, Any], max_samples: int = 6,
                     estimator: Optional[str] = None) -> bytes:
    """The knowledge points of teacher, student, baseline and random weights
    (those present in ``maps``) on point clouds, as PNG bytes.

    ``maps``: {"clouds": (N, P, 3) xyz, "masks": (N, P) bool (the object's
    points), role: {"entropy": (N, P), "points": (N, P) bool,
    "foreground": (N, P) bool}} - per point what
    :func:`~kdlens.report.figures.knowledge_point_maps` takes per grid cell.

    One row per sample (up to ``max_samples``): first the cloud with the
    object's points orange and the background's grey, then one 3-D scatter per
    role with every point coloured by its entropy (one colour scale for the
    whole figure, dark = low entropy = information kept) and the knowledge
    points drawn larger with an orange (foreground) or blue (background) ring,
    titled with the role's N_fg / N_bg on that sample.  A role without points
    is titled "–"; without clouds the figure says "no data"."""
    clouds, masks = _np(maps.get("clouds")), _np(maps.get("masks"))
    roles = [r for r in MAP_ROLES if maps.get(r) is not None]
    usable = clouds is not None and clouds.ndim == 3 and clouds.shape[-1] >= 3
    n = min(len(clouds), max(max_samples, 0)) if usable else 0
    if n == 0:
        fig = Figure(figsize=(6.0, 2.0))
        _no_data(fig.add_subplot(1, 1, 1), f"no knowledge-point maps for {_where(layer, estimator)}")
        return _png(fig)

    norm = _entropy_norm(maps, roles, n)
    columns = 1 + len(roles)
    fig = Figure(figsize=(2.6 * columns + 0.6, 2.7 * n + 0.9))
    panels = fig.subplots(n, columns, squeeze=False, subplot_kw={"projection": "3d", "computed_zorder": False})
    for i in range(n):
        xyz = clouds[i][:, :3].astype(float)
        n_points = xyz.shape[0]
        mask = _per_point(masks, i, n_points)
        ax = panels[i, 0]
        draw_cloud(ax, xyz, mask)
        head = "cloud, object in orange" if mask is not None else "cloud (no object mask)"
        ax.set_title(f"{head if i == 0 else ''}\nsample {i}", fontsize=9)

        for j, role in enumerate(roles, start=1):
            ax = panels[i, j]
            entry = maps[role]
            entropy = _per_point(_np(entry.get("entropy")), i, n_points)
            fill = draw_entropy(ax, xyz, entropy, norm)
            points = _per_point(_np(entry.get("points")), i, n_points)
            foreground = _per_point(_np(entry.get("foreground")), i, n_points)
            name = ROLE_TITLES.get(role, role) + ("" if entropy is not None else " (no entropy)")
            if points is None or foreground is None:
                ax.set_title(f"{name}\n–", fontsize=9)
                continue
            n_fg, n_bg = draw_knowledge_points(ax, xyz, fill, points, foreground)
            ax.set_title(f"{name}\nN_fg / N_bg = {n_fg} / {n_bg}", fontsize=9)

    height = fig.get_figheight()
    fig.suptitle(f"Knowledge points on point clouds at layer {_where(layer, estimator)} (the paper's Fig. 6 shows them on images)",
                 fontsize=11, y=1.0 - 0.12 / height)
    fig.legend(
        handles=legend_handles("first column"),
        loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0),
    )
    right = 1.0 - 0.6 / fig.get_figwidth()  # room for the colour bar
    fig.subplots_adjust(left=0.01, right=right - 0.01, bottom=0.35 / height, top=1.0 - 0.75 / height,
                        wspace=0.05, hspace=0.2)
    if norm is not None:
        bar = fig.add_axes((right + 0.005, 0.2, 0.012, 0.6))
        fig.colorbar(ScalarMappable(norm=norm, cmap=ENTROPY_CMAP), cax=bar)
        bar.set_ylabel("entropy H_i (dark = information kept)", fontsize=8)
        bar.tick_params(labelsize=7)
    return _png(fig)
