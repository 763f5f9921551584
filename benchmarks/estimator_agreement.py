"""How stable the converged estimator is, and how well it agrees with the authors' recipe.

On one trained model of a run directory (default: the teacher's last
checkpoint) at one layer, for N training images of the student's share (the
images the analysis uses), it measures:

* budget and seed: the converged estimator at 1x and at 2x the step budget,
  with different seeds -> Jaccard of the knowledge-point sets;
* warm start: a start from the sigma of the checkpoint before (its own cold
  run) with the analysis's warm settings, against a cold start on the same
  checkpoint -> Jaccard;
* agreement: converged against paper on the same checkpoint and images ->
  mean per-image Spearman correlation of the entropies, and the Jaccard of
  the knowledge points (each under its own default rule);
* the paper's recipe against itself with another seed (Spearman, Jaccard),
  and both estimators against the optimum of the network linearised at the
  image (sigma_u^2 proportional to 1 / sum_{i in u} ||df/dx_i||^2, the
  closed form of a linear layer): how much of each is local sensitivity;
* the Monte-Carlo bound: at the converged sigma, the standard deviation of
  one draw's gradient of a unit's loss over the loss's curvature there
  (2 alpha / n for n units). An estimator that used all N draws of a run
  as well as they can be used (the Polyak-Ruppert rate of averaged SGD)
  would know a unit's log sigma to about that ratio over sqrt(N); printed is
  what that gives for the difference of the 1x and 2x runs, beside the
  standard deviation of that difference the two runs actually show;
* the spread: per-image entropy range and background standard deviation under
  each estimator, and the paper's b = 0.2 in units of the paper's background
  standard deviation (what b = 1 background std of the converged rule is
  compared with).

Jaccard here is pooled over the images: sum |A & B| / sum |A | B| over the
(image, unit) knowledge points. It prints a table and writes JSON with --json.

    PYTHONPATH=src .venv/bin/python benchmarks/estimator_agreement.py --run runs/demo/run
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from kdlens.builders import build_datasets, build_network
from kdlens.config import load_config
from kdlens.explain import information_discarding
from kdlens.explain.analyze import AnalysisSettings, sample_indices
from kdlens.explain.common import feature_fn, frozen
from kdlens.explain.knowledge_points import foreground_ratio, knowledge_points
from kdlens.modalities.units import check_units, foreground_units, grid_units, unit_foreground_share
from kdlens.store import RunDirectory


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx, ry = x.argsort().argsort().double(), y.argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def linearised_entropy(model, images, layer, units) -> torch.Tensor:
    """Per-unit entropy, up to a constant, of the optimum for f linearised at each image."""
    f = feature_fn(model, layer)
    unit_map = check_units(units, tuple(images.shape[1:])).reshape(-1)
    n = int(unit_map.max()) + 1
    rows = []
    with frozen(model):
        for image in images:
            jac = torch.autograd.functional.jacobian(lambda z: f(z.unsqueeze(0)).reshape(-1), image, vectorize=True)
            column = (jac.reshape(jac.shape[0], -1) ** 2).sum(0)
            rows.append(torch.zeros(n, dtype=column.dtype).index_add_(0, unit_map, column))
    return -0.5 * torch.stack(rows).clamp_min(1e-30).log()


def gradient_noise_over_curvature(model, images, layer, units, result, alpha: float, draws: int = 64) -> float:
    """Median over units below sigma_max of sd(one draw's d loss / d log sigma_u) / (2 alpha / n)."""
    f = feature_fn(model, layer)
    unit_map = check_units(units, tuple(images.shape[1:])).reshape(-1)
    n = int(unit_map.max()) + 1
    gen = torch.Generator().manual_seed(11)
    grads = []
    with frozen(model):
        f0 = f(images).reshape(len(images), -1).detach()
        for _ in range(draws):
            log_sigma = result.sigma.log().clone().requires_grad_(True)
            sigma = log_sigma.exp().index_select(1, unit_map).reshape(images.shape)
            noisy = f(images + sigma * torch.randn(images.shape, generator=gen)).reshape(len(images), -1)
            loss = ((noisy - f0) ** 2).sum(-1) / result.feature_variance
            grads.append(torch.autograd.grad(loss.sum(), log_sigma)[0])
    inner = result.valid.unsqueeze(1) & (result.sigma < 0.99 * result.sigma.max())
    return float((torch.stack(grads).std(0)[inner] / (2 * alpha / n)).median())


def mean_spearman(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> float:
    rows = [spearman(a[i], b[i]) for i in range(len(a)) if valid[i]]
    return sum(rows) / max(len(rows), 1)


def points(settings: AnalysisSettings, arch: str, entropy, foreground, valid):
    rule = settings.rule(arch)
    return knowledge_points(entropy, foreground, rule.threshold, valid=valid, relative=rule.relative,
                            baseline=rule.baseline)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run directory made by kdlens train or kdlens demo (its run/)")
    ap.add_argument("--role", default="teacher")
    ap.add_argument("--epoch", type=int, help="checkpoint (default: the role's last)")
    ap.add_argument("--layer", default="fc1")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--noise-samples", type=int, default=AnalysisSettings.noise_samples,
                    help="the converged estimator's draws per step (precision grows with steps x draws)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    run = RunDirectory(args.run)
    config = load_config(run.config_path)
    train_set, test_set = build_datasets(config)
    store = run.role(args.role)
    epoch = args.epoch if args.epoch is not None else store.latest()
    before = max(e for e in store.epochs() if e < epoch)
    spec = config.resolved_teacher_model if args.role == "teacher" else config.model
    model = build_network(spec, config, len(train_set.classes), init=args.role)
    indices = sample_indices(config, train_set, test_set, args.samples, "train")
    images = torch.stack([train_set[i].image for i in indices])
    masks = torch.stack([train_set[i].mask for i in indices])
    units = grid_units(images.shape[-2], images.shape[-1], args.grid)
    fg = foreground_units(unit_foreground_share(masks, units), 0.5)
    base = AnalysisSettings(layer=args.layer, grid=args.grid, noise_samples=args.noise_samples)
    cold = base.engine_options(spec.arch, warm=False)
    numbers, began = {}, time.perf_counter()

    def measure(name, state_epoch, **options):
        model.load_state_dict(store.load(state_epoch)["model"])
        t = time.perf_counter()
        r = information_discarding(model, images, args.layer, units, **options)
        print(f"  {name:28s} {time.perf_counter() - t:6.1f} s", flush=True)
        return r

    print(f"{args.run} {args.role} epoch {epoch} (before: {before}), layer {args.layer}, "
          f"{args.samples} images, {args.grid}x{args.grid} grid, {args.noise_samples} draws a step")
    one = measure("converged 1x, seed 1", epoch, **cold, seed=1)
    two = measure("converged 2x, seed 2", epoch, **{**cold, "steps": 2 * cold["steps"]}, seed=2)
    previous = measure("converged, checkpoint before", before, **cold, seed=3)
    warm = measure("converged warm start", epoch, **base.engine_options(spec.arch, warm=True),
                   init_sigma=previous.sigma, seed=4)
    p1, p2, pw = (points(base, spec.arch, r.entropy, fg, r.valid) for r in (one, two, warm))
    numbers["jaccard_budget_seed"] = jaccard(p1.is_point, p2.is_point)
    numbers["jaccard_warm_cold"] = jaccard(pw.is_point, p1.is_point)
    numbers["converged_entropy_range"] = float((one.entropy.amax(1) - one.entropy.amin(1)).mean())
    numbers["converged_bg_std"] = float(p1.threshold.mean() / base.rule(spec.arch).threshold)
    numbers["converged_points_per_image"] = float(p1.is_point.sum(1).double().mean())
    # the per-image counts behind N_fg, N_bg and lambda, which move less than the sets
    for name, p in (("1x", p1), ("2x", p2)):
        numbers[f"n_fg_{name}"] = float(p.n_fg.double().mean())
        numbers[f"lambda_{name}"] = foreground_ratio(p.n_fg, p.n_bg)[0]
    numbers["entropy_max_abs_change_2x"] = float((one.entropy - two.entropy).abs().max())
    numbers["entropy_median_abs_change_2x"] = float((one.entropy - two.entropy).abs().median())
    # the 1x and 2x runs are independent: median |difference| = 0.6745 * sd of the difference (normal errors)
    numbers["entropy_difference_sd_1x_2x"] = numbers["entropy_median_abs_change_2x"] / 0.6745
    ratio = gradient_noise_over_curvature(model, images, args.layer, units, one, cold["alpha"])
    numbers["gradient_sd_over_curvature"] = ratio
    draws = cold["steps"] * args.noise_samples  # of the 1x run; the 2x run has twice as many
    numbers["entropy_difference_sd_bound"] = ratio * (1 / draws + 1 / (2 * draws)) ** 0.5
    if not args.skip_paper:
        paper_settings = replace(base, estimator="paper")
        paper = measure("paper", epoch, estimator="paper", **paper_settings.engine_options(spec.arch, warm=False), seed=5)
        pp = points(paper_settings, spec.arch, paper.entropy, fg, paper.valid)
        again = measure("paper, another seed", epoch, estimator="paper",
                        **paper_settings.engine_options(spec.arch, warm=False), seed=6)
        both = one.valid & paper.valid
        numbers["spearman_converged_paper"] = mean_spearman(one.entropy, paper.entropy, both)
        numbers["jaccard_converged_paper"] = jaccard(p1.is_point, pp.is_point)
        numbers["spearman_paper_seeds"] = mean_spearman(paper.entropy, again.entropy, paper.valid & again.valid)
        numbers["jaccard_paper_seeds"] = jaccard(pp.is_point, points(paper_settings, spec.arch, again.entropy, fg,
                                                                     again.valid).is_point)
        linear = linearised_entropy(model, images, args.layer, units)
        numbers["spearman_paper_linearised"] = mean_spearman(paper.entropy, linear, paper.valid)
        numbers["spearman_converged_linearised"] = mean_spearman(one.entropy, linear, one.valid)
        numbers["paper_entropy_range"] = float((paper.entropy.amax(1) - paper.entropy.amin(1)).mean())
        bg = ~fg
        bg_std = torch.stack([paper.entropy[b][bg[b]].std(correction=0) for b in range(len(indices))])
        numbers["paper_bg_std"] = float(bg_std.mean())
        numbers["paper_b_in_bg_std"] = float((paper_settings.rule(spec.arch).threshold / bg_std).median())
        numbers["paper_points_per_image"] = float(pp.is_point.sum(1).double().mean())
    numbers["seconds"] = round(time.perf_counter() - began, 1)
    for key, value in numbers.items():
        print(f"{key:32s} {value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
