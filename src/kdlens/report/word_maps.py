"""Knowledge points on sentences: the text counterpart of the paper's Fig. 6.

One block per sentence, one line per role (teacher, student, baseline and
random weights, those present): the sentence's words in boxes shaded by
their entropy (one colour scale for the whole figure, dark = low entropy =
information kept), a knowledge point's box edged orange (foreground) or
blue (background), and the foreground words (the sentiment words, the
answer) underlined in every line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from kdlens.report.figures import BG_COLOUR, FG_COLOUR, MAP_ROLES, ROLE_TITLES, _no_data, _np, _png, _where
from kdlens.report.point_maps import ENTROPY_CMAP, MISSING_COLOUR

LABEL_WIDTH = 0.17  # of the figure's width: the role's name and counts
WORD_GAP = 0.012
FONT_SIZE = 8
LINE_HEIGHT = 0.34  # inches
EDGE_WIDTH = 2.0


def _row(value: Optional[np.ndarray], i: int, n_words: int) -> Optional[np.ndarray]:
    """Row ``i`` of an (N, n) per-word array cut to the sentence's ``n_words``, or None."""
    if value is None or value.ndim < 2 or i >= len(value) or value.shape[1] < n_words:
        return None
    return np.asarray(value[i])[:n_words]


def _draw_line(fig: Figure, renderer, y: float, label: str, words: Sequence[str], fill: Sequence,
               edges: Sequence, underline: np.ndarray) -> None:
    """One role's line: each word boxed, placed after the measured width of the one before."""
    fig.text(0.01, y, label, fontsize=FONT_SIZE, va="center", ha="left", weight="bold")
    x, width = LABEL_WIDTH, fig.bbox.width
    for k, word in enumerate(words):
        shade = fill[k]
        box = dict(boxstyle="square,pad=0.25", facecolor=shade, edgecolor=edges[k] or "none",
                   linewidth=EDGE_WIDTH if edges[k] else 0)
        light = sum(shade[:3]) / 3 > 0.45
        text = fig.text(x, y, word, fontsize=FONT_SIZE, va="center", ha="left", bbox=box,
                        color="black" if light else "white")
        extent = text.get_window_extent(renderer)
        if underline[k]:
            below = y - 0.6 * extent.height / fig.bbox.height - 0.004
            fig.add_artist(Line2D([extent.x0 / width, extent.x1 / width], [below, below], color=FG_COLOUR,
                                  linewidth=1.5, transform=fig.transFigure))
        x = extent.x1 / width + WORD_GAP
        if x > 0.97 and k + 1 < len(words):  # the rest does not fit: say so rather than draw outside
            fig.text(0.975, y, "…", fontsize=FONT_SIZE, va="center")
            break


@dataclass
class SentenceBlock:
    """One sentence and the lines drawn under it: (label, entropy (n,), points (n,) bool, scale)
    per line, ``scale`` naming the colour scale the line's entropies use."""

    heading: str
    words: Sequence[str]
    foreground: np.ndarray  # (n,) bool, the foreground words
    lines: list[tuple[str, Optional[np.ndarray], Optional[np.ndarray], str]]


def _norms(blocks: Sequence[SentenceBlock]) -> dict[str, Optional[Normalize]]:
    """One colour scale per ``scale`` name over every finite entropy drawn with it."""
    values: dict[str, list] = {}
    for block in blocks:
        for _, entropy, _, scale in block.lines:
            chunk = np.empty(0) if entropy is None else np.asarray(entropy, dtype=float)
            values.setdefault(scale, []).append(chunk[np.isfinite(chunk)])
    norms: dict[str, Optional[Normalize]] = {}
    for scale, chunks in values.items():
        every = np.concatenate(chunks)
        if every.size == 0:
            norms[scale] = None
            continue
        low, high = float(every.min()), float(every.max())
        norms[scale] = Normalize(low - 0.5, high + 0.5) if low == high else Normalize(low, high)
    return norms


def draw_sentences(blocks: Sequence[SentenceBlock], title: str, empty: str) -> bytes:
    """PNG bytes: each block's heading, then its lines, each the sentence's words
    boxed, shaded by entropy, a knowledge point edged orange (foreground) or blue
    (background), the foreground words underlined."""
    lines = sum(len(block.lines) + 1 for block in blocks)
    fig = Figure(figsize=(11, LINE_HEIGHT * max(lines, 1) + 1.0))
    if not blocks:
        _no_data(fig.add_subplot(1, 1, 1), empty)
        return _png(fig)
    norms = _norms(blocks)
    renderer = FigureCanvasAgg(fig).get_renderer()
    height = fig.get_figheight()
    y = 1.0 - 0.55 / height
    step = LINE_HEIGHT / height
    for block in blocks:
        n_words = len(block.words)
        underline = np.asarray(block.foreground, dtype=bool)[:n_words]
        fig.text(0.01, y, block.heading, fontsize=FONT_SIZE, va="center", style="italic")
        y -= step
        for label, entropy, points, scale in block.lines:
            fill = [MISSING_COLOUR] * n_words
            norm = norms.get(scale)
            if entropy is not None and norm is not None:
                fill = [ENTROPY_CMAP(norm(h)) if np.isfinite(h) else MISSING_COLOUR
                        for h in np.asarray(entropy, dtype=float)[:n_words]]
            edges: list = [None] * n_words
            counts = ""
            if points is not None:
                points = np.asarray(points, dtype=bool)[:n_words]
                edges = [(FG_COLOUR if underline[k] else BG_COLOUR) if points[k] else None for k in range(n_words)]
                counts = f" {int((points & underline).sum())}/{int((points & ~underline).sum())}"
            _draw_line(fig, renderer, y, f"{label}{counts}", block.words, fill, edges, underline)
            y -= step
    fig.legend(handles=[Patch(facecolor="white", edgecolor=FG_COLOUR, linewidth=EDGE_WIDTH,
                              label="foreground knowledge point"),
                        Patch(facecolor="white", edgecolor=BG_COLOUR, linewidth=EDGE_WIDTH,
                              label="background knowledge point"),
                        Line2D([], [], color=FG_COLOUR, label="foreground word")],
               loc="lower center", ncol=3, fontsize=FONT_SIZE, frameon=False)
    fig.suptitle(title, fontsize=FONT_SIZE + 1)
    return _png(fig)


def sentence_maps(layer: str, maps: Mapping[str, Any], max_samples: int = 6,
                  estimator: Optional[str] = None) -> bytes:
    """PNG bytes of the knowledge points on up to ``max_samples`` sentences, a line per role.

    ``maps``: {"words": [[word, ...], ...], "word_labels": (N, n) bool (the
    foreground words), role: {"entropy": (N, n), "points": (N, n) bool,
    "foreground": (N, n) bool}}, n the most words of any sentence (entries past
    a sentence's own words are ignored). One colour scale for the figure."""
    sentences = list(maps.get("words") or [])[:max_samples]
    roles = [r for r in MAP_ROLES if maps.get(r) is not None]
    labels = _np(maps.get("word_labels"))
    blocks = []
    for i, words in enumerate(sentences):
        n_words = len(words)
        foreground = _row(labels, i, n_words)
        blocks.append(SentenceBlock(
            f"sentence {i + 1}", words, np.zeros(n_words, bool) if foreground is None else foreground,
            [(ROLE_TITLES.get(role, role), _row(_np(maps[role].get("entropy")), i, n_words),
              _row(_np(maps[role].get("points")), i, n_words), "entropy") for role in roles]))
    return draw_sentences(blocks, f"Knowledge points at {_where(layer, estimator)}; role N_fg/N_bg",
                          f"no knowledge-point maps for {_where(layer, estimator)}")
