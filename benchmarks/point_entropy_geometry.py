"""Where a point cloud's knowledge points go: entropy against the point's place.

Reads a ``kdlens validate --modality points`` output directory (its
``validation.json`` and cached measurements), regenerates the measured clouds
from the recorded settings, and prints, per network and estimator, the mean
over clouds of the Spearman rank correlation between a point's entropy H_i and

* its distance from the cloud's centroid (how far out it lies), and
* its distance to its 5th nearest neighbour (how sparse its neighbourhood is),

with the mean entropy of the object's and of the background's points, and
their difference at equal distance: the mean over clouds of (object minus
background) of the residuals of H_i after a per-cloud least-squares fit of
H_i on 1, d_i and d_i^2 (d_i the distance from the centroid), with its
standard error over clouds. A network that keeps the object's information
more than the background's, wherever the points lie, has a negative
difference there. A negative correlation means the layer keeps the information of outlying (or
sparse) points more: low entropy, knowledge points there, whatever the label
depends on. The untrained network is the reference for what the architecture
does before it learns anything.

    PYTHONPATH=src .venv/bin/python benchmarks/point_entropy_geometry.py DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kdlens.data.point_shapes import PointShapes
from kdlens.store import load_checkpoint_file
from kdlens.validate import CUES, ESTIMATORS, NETWORKS

NEIGHBOUR = 5


def ranks(values: torch.Tensor) -> torch.Tensor:
    return values.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (no ties expected among continuous values)."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def equal_distance_gap(entropy: torch.Tensor, points: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean residual entropy of the object's points minus the background's, after
    removing what a quadratic in the distance from the centroid explains."""
    h = entropy.double()
    d = (points - points.mean(0)).norm(dim=1).double()
    design = torch.stack([torch.ones_like(d), d, d * d], dim=1)
    fit = torch.linalg.lstsq(design, h[:, None]).solution[:, 0]
    residual = h - design @ fit
    return float(residual[mask].mean() - residual[~mask].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a kdlens validate --modality points output directory")
    args = parser.parse_args()
    summary = json.loads((args.out / "validation.json").read_text())
    settings, indices = summary["settings"], summary["measurement"]["indices"]
    if settings.get("modality") != "points":
        raise SystemExit(f"{args.out} holds a validation of {settings.get('modality')!r} data; expected 'points'")
    print(f"{len(indices)} clouds, layer {settings['layer']}; Spearman(H, distance), mean over clouds")
    print(f"{'network':16s}{'estimator':11s}{'centroid':>10s}{f'{NEIGHBOUR}-NN':>8s}{'H object':>10s}{'H bkgd':>8s}"
          f"{'obj-bkgd at equal distance':>30s}")
    for network in NETWORKS:
        clouds = PointShapes(split="train", num_samples=settings["train_samples"], num_points=settings["num_points"],
                             num_classes=settings["num_classes"], seed=settings["seed"],
                             background_points=settings["background_points"],
                             background_clouds=settings["background_clouds"], cue=CUES[network])
        for estimator in ESTIMATORS:
            measured = load_checkpoint_file(args.out / "measurements" / f"{network}-{estimator}.pt",
                                            required=("result",), kind="validation measurement")["result"]
            rows, gaps = [], []
            for row, index in enumerate(indices):
                points, mask, entropy = clouds.points[index], clouds.masks[index], measured["entropy"][row]
                spread = (points - points.mean(0)).norm(dim=1)
                sparse = torch.cdist(points, points).topk(NEIGHBOUR + 1, largest=False).values[:, -1]
                rows.append((spearman(entropy, spread), spearman(entropy, sparse),
                             float(entropy[mask].mean()), float(entropy[~mask].mean())))
                gaps.append(equal_distance_gap(entropy, points, mask))
            means = torch.tensor(rows).mean(0).tolist()
            gap = torch.tensor(gaps, dtype=torch.float64)
            error = float(gap.std() / len(gap) ** 0.5) if len(gap) > 1 else float("nan")
            print(f"{network:16s}{estimator:11s}{means[0]:+10.2f}{means[1]:+8.2f}{means[2]:10.2f}{means[3]:8.2f}"
                  f"{float(gap.mean()):+21.3f} ± {error:.3f}")


if __name__ == "__main__":
    main()
