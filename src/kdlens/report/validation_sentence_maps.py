"""The figure of ``kdlens validate --modality text``: knowledge points on
planted knowledge in sentences.

The text counterpart of :func:`kdlens.report.validation_maps.maps_figure`:
per network (sentiment words only, filler cue, random weights) and measured
sentence, one line per estimator with the words shaded by entropy and the
knowledge points edged, as :func:`kdlens.report.word_maps.sentence_maps`
draws them. Each estimator has its own colour scale, shared by the networks
(the two estimators' entropies are not on one scale).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kdlens.report.word_maps import SentenceBlock, draw_sentences


def sentence_validation_figure(panels: dict[str, dict[str, Any]], max_samples: int, networks: Sequence[str],
                               estimators: Sequence[str], layer: str = "layer2") -> bytes:
    """PNG bytes. ``panels``: {network: {"words": [[word, ...], ...], "indices": [...],
    estimator: {"entropy": (B, n), "points": (B, n) bool, "foreground": (B, n) bool}}}."""
    blocks = []
    for network in (n for n in networks if n in panels):
        panel = panels[network]
        for i, words in enumerate(panel["words"][:max_samples]):
            n_words = len(words)
            first = panel.get(estimators[0], {})
            labels = np.asarray(first["foreground"][i])[:n_words] if "foreground" in first else np.zeros(n_words, bool)
            lines = [(estimator, np.asarray(panel[estimator]["entropy"][i])[:n_words],
                      np.asarray(panel[estimator]["points"][i])[:n_words], estimator)
                     for estimator in estimators if estimator in panel]
            blocks.append(SentenceBlock(f"{network}, sample {panel['indices'][i]}", words, labels, lines))
    return draw_sentences(blocks, f"Planted knowledge at {layer}: knowledge points per estimator; line N_fg/N_bg",
                          "no sentences to draw")
