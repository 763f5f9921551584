"""How much more a network keeps the sentiment words than the other words.

Reads a ``kdlens validate --modality text`` output directory (its
``validation.json`` and cached measurements), regenerates the measured
sentences from the recorded settings, and prints, per network and
estimator, the mean over sentences of H(sentiment words) - H(other words)
(the mean entropy of the foreground words minus that of the rest) with its
standard error. The knowledge-point bars of ``kdlens validate`` count words
past a threshold; this gap says whether the entropies rank the planted
words the right way round at all: negative for a network that keeps the
sentiment words, positive for one that discards them, about 0 for random
weights.

    PYTHONPATH=src .venv/bin/python benchmarks/word_entropy_gap.py DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from kdlens.store import load_checkpoint_file
from kdlens.validate import CUES, ESTIMATORS, KINDS, NETWORKS, ValidationSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a kdlens validate --modality text output directory")
    args = parser.parse_args()
    summary = json.loads((args.out / "validation.json").read_text())
    recorded, indices = summary["settings"], summary["measurement"]["indices"]
    if recorded.get("modality") != "text":
        raise SystemExit(f"{args.out} holds a validation of {recorded.get('modality')!r} data; expected 'text'")
    names = {field.name for field in dataclasses.fields(ValidationSettings)}
    settings = ValidationSettings(**{k: v for k, v in recorded.items() if k in names})
    kind = KINDS["text"]
    print(f"{len(indices)} sentences, layer {settings.layer}; H(sentiment words) - H(other words), mean ± s.e.")
    for network in NETWORKS:
        sentences = kind.dataset(settings, "train", CUES[network], settings.train_samples)
        for estimator in ESTIMATORS:
            entropy = load_checkpoint_file(args.out / "measurements" / f"{network}-{estimator}.pt",
                                           required=("result",), kind="validation measurement")["result"]["entropy"]
            gaps = []
            for row, index in enumerate(indices):
                foreground = torch.tensor(sentences.foreground_words(index))
                words = entropy[row, :len(foreground)]
                gaps.append(float(words[foreground].mean() - words[~foreground].mean()))
            gap = torch.tensor(gaps, dtype=torch.float64)
            error = float(gap.std() / len(gap) ** 0.5) if len(gap) > 1 else float("nan")
            print(f"{network:16s}{estimator:11s}{float(gap.mean()):+8.3f} ± {error:.3f}")


if __name__ == "__main__":
    main()
