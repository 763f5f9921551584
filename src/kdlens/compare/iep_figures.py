"""The IEP paper's Fig. 5, from ``kdlens.compare.iep_knowledge``, as PNG bytes:

* :func:`knowledge_maps` - per sensing point the affinity matrix A (grey
  scale) and per pair of adjacent points the alteration K^alt (RdBu, centred
  on zero), for the teacher and the IEP student, samples sorted by class;
* :func:`component_scatter` - per sensing point a 3-D scatter of the top
  three compressed components C, coloured by class.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from matplotlib.figure import Figure

from kdlens.report.figures import _png

SIDES = (("teacher", "teacher"), ("student", "IEP student"))


def _class_ticks(ax, labels: list[int], classes: list[str]) -> None:
    """Ticks at the middle of each class block, lines between blocks."""
    labels = np.asarray(labels)
    edges = np.flatnonzero(np.diff(labels)) + 0.5
    for edge in edges:
        ax.axhline(edge, color="tab:orange", linewidth=0.4)
        ax.axvline(edge, color="tab:orange", linewidth=0.4)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(labels)) + 1])
    ends = np.concatenate([starts[1:], [len(labels)]])
    middles = (starts + ends - 1) / 2
    names = [classes[labels[s]] for s in starts]
    ax.set_xticks(middles, names, fontsize=5, rotation=90)
    ax.set_yticks(middles, names, fontsize=5)


def knowledge_maps(knowledge: Mapping[str, Any]) -> bytes:
    """Rows: teacher A, student A (one panel per sensing point), teacher
    K_alt, student K_alt (one panel per pair of adjacent points)."""
    points = knowledge["points"]
    labels, classes = knowledge["labels"], knowledge["classes"]
    pairs = [f"{a}→{b}" for a, b in zip(points, points[1:])]
    scale = max(float(np.abs(np.asarray(k)).max()) for side, _ in SIDES for k in knowledge[side]["K_alt"]) or 1.0
    rows = [(side, name, "A", points) for side, name in SIDES] + [(side, name, "K_alt", pairs) for side, name in SIDES]
    columns = len(points)
    fig = Figure(figsize=(2.0 * columns + 0.8, 2.1 * len(rows) + 0.5), layout="constrained")
    for r, (side, name, kind, titles) in enumerate(rows):
        axes = []
        for c, title in enumerate(titles):
            ax = fig.add_subplot(len(rows), columns, r * columns + c + 1)
            values = np.asarray(knowledge[side][kind][c], dtype=float)
            if kind == "A":
                image = ax.imshow(values, cmap="gray", vmin=-1, vmax=1)
            else:
                image = ax.imshow(values, cmap="RdBu", vmin=-scale, vmax=scale)
            _class_ticks(ax, labels, classes)
            ax.set_title(f"{name}: {kind} {title}", fontsize=7)
            axes.append(ax)
        fig.colorbar(image, ax=axes, shrink=0.8).ax.tick_params(labelsize=6)
    fig.suptitle("IEP knowledge on test images sorted by class: A (grey, cosine affinity of the compressed "
                 "components, Eq. 7) and K_alt (RdBu, Σ_i mean m^i: how the message passing moves each "
                 "affinity from one point to the next)", fontsize=8)
    return _png(fig)


def component_scatter(knowledge: Mapping[str, Any]) -> bytes:
    points = knowledge["points"]
    labels, classes = np.asarray(knowledge["labels"]), knowledge["classes"]
    colours = [f"C{i % 10}" for i in range(len(classes))]
    fig = Figure(figsize=(2.6 * len(points), 2.8 * len(SIDES)))
    for r, (side, name) in enumerate(SIDES):
        for c, point in enumerate(points):
            ax = fig.add_subplot(len(SIDES), len(points), r * len(points) + c + 1, projection="3d")
            components = np.asarray(knowledge[side]["C"][c], dtype=float)
            top = np.zeros((len(components), 3))
            top[:, : min(3, components.shape[1])] = components[:, :3]
            for k in np.unique(labels):
                mask = labels == k
                ax.scatter(top[mask, 0], top[mask, 1], top[mask, 2], s=6, color=colours[k],
                           label=classes[k] if r == 0 and c == 0 else None)
            ax.set_title(f"{name}: C at {point}", fontsize=7)
            ax.tick_params(labelsize=4)
    fig.legend(loc="lower center", ncol=min(len(classes), 8), fontsize=6)
    fig.suptitle("top three compressed components C (Eq. 5) per sensing point, coloured by class", fontsize=8)
    return _png(fig)
