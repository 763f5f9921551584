"""The point-cloud knowledge-point maps and their place in the report."""

import numpy as np
import torch

from kdlens.modalities.points import PointModality
from kdlens.report import write_report
from kdlens.report.point_maps import point_cloud_maps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROLES = ("teacher", "student", "baseline", "random")
FAST = {"resamples": 200}


def cloud_maps(n=2, p=64, seed=0):
    """Clouds in the unit cube with the first half of each cloud the object, and
    per role random entropies whose lowest quarter are the knowledge points."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, p), dtype=bool)
    masks[:, : p // 2] = True
    maps = {"clouds": rng.uniform(-1, 1, size=(n, p, 3)).astype(np.float32), "masks": masks}
    for role in ROLES:
        entropy = rng.normal(size=(n, p))
        maps[role] = {"entropy": entropy, "points": entropy < np.quantile(entropy, 0.25), "foreground": masks}
    return maps


def test_point_cloud_maps_draw_every_role():
    png = point_cloud_maps("fc1", cloud_maps(), estimator="converged")
    assert png[:8] == PNG_SIGNATURE and len(png) > 1000


def test_point_cloud_maps_take_tensors_and_missing_roles():
    maps = {k: torch.as_tensor(v) for k, v in cloud_maps().items() if k in ("clouds", "masks")}
    maps["teacher"] = {k: torch.as_tensor(v) for k, v in cloud_maps()["teacher"].items()}
    maps["student"] = {"entropy": None, "points": None, "foreground": None}  # shown as "–"
    maps["baseline"] = None  # left out
    assert point_cloud_maps("fc1", maps)[:8] == PNG_SIGNATURE


def test_point_cloud_maps_without_samples_say_no_data():
    for maps in ({"clouds": np.zeros((0, 64, 3)), "masks": np.zeros((0, 64), bool)}, {}):
        png = point_cloud_maps("fc1", maps)
        assert png[:8] == PNG_SIGNATURE
    # the "no data" figure is one small panel, far smaller than any drawn cloud
    assert len(png) < len(point_cloud_maps("fc1", cloud_maps()))


def test_write_report_draws_cloud_maps(tmp_path):
    per_sample = {"n_fg": [3.0, 4.0], "n_bg": [1.0, 2.0], "ratio": [0.75, 0.67]}
    summary = {"n_fg": 3.5, "n_bg": 1.5, "lambda": 0.7, "accuracy": 0.8, "epochs": [0], "samples": 2,
               "per_epoch": [], "per_sample": per_sample}
    maps = cloud_maps()
    data = {"title": "clouds", "distilled_layer": "fc1", "settings": {}, "timing": {}, "estimators": ["converged"],
            "layers": {"fc1": {"converged": {role: dict(summary) for role in ("teacher", "student", "baseline")}}},
            "maps": {"fc1": {"clouds": maps["clouds"], "masks": maps["masks"],
                             "converged": {role: maps[role] for role in ROLES}}}}
    written = write_report(tmp_path, data, bootstrap=FAST, unit_maps=PointModality().unit_maps)
    figure = written["figures/maps_fc1_converged.png"]
    assert figure.read_bytes()[:8] == PNG_SIGNATURE
    md = (tmp_path / "report.md").read_text()
    assert "(figures/maps_fc1_converged.png)" in md and "point clouds" in md
