"""Knowledge points at scale: kdlens's analysis against the authors' one-image procedure.

In one process, on one run's checkpoint series (default: its teacher), the
same N analysis images and E checkpoints, it times:

* reference: the authors' procedure (``sigma/train_sigma.py`` and
  ``NoiseLayer`` of Jenniferlyx/Explaining-Knowledge-Distillation-by-
  Quantifying-the-Knowledge), written here in its plain form: one image and
  one checkpoint at a time; a 16 x 16 sigma clamped to [0.001, 1] in the
  forward pass and nearest-upsampled to the image; 96 noisy copies per step
  forwarded at once up to the layer (their ``get_feature`` stops there too);
  nn.MSELoss after a ReLU over delta_f^2; torch.optim.SGD at 1e-4 on sigma;
  the lambda x 1.5 rule after step 59; the iterate nearest to the entropy
  -2.8. As released, the network's weights keep ``requires_grad`` (the script
  never turns it off), so every backward pass also computes their gradients.
  ``--frozen-reference`` also times the same loop with frozen weights, to show
  how much of kdlens's advantage that alone is;
* kdlens ``paper``: ``analyze_role(estimator="paper")`` on the same images
  and checkpoints. Each image draws its noise from its own generator, seeded
  as the reference's, so the outputs must be equal: it prints the largest
  entropy difference and how many (image, checkpoint, unit) knowledge-point
  labels differ;
* kdlens ``converged``: ``analyze_role`` with its default settings (a cold
  start at the first checkpoint, warm starts from the previous one after it),
  and with ``--cold`` also every checkpoint cold. Its answers are not the
  recipe's: it prints the agreement with ``paper`` (mean per-image Spearman
  of the entropies, pooled knowledge-point Jaccard) and, with ``--cold``, the
  Jaccard of warm against cold starts, next to the fidelity issue's bars
  (>= 0.8 and >= 0.9);
* the training loop's overhead over a plain PyTorch loop
  (``training_overhead.py``), unless ``--no-training``.

Throughput is per (image, checkpoint); every timing is repeated ``--runs``
times, alternating, and the median is printed with the ratio to the
reference. The kdlens analyses write into a fresh scratch run directory that
links to the run's checkpoints, so nothing is read from an earlier cache.

    PYTHONPATH=src .venv/bin/python benchmarks/analysis_throughput.py --run runs/demo/run
    PYTHONPATH=src .venv/bin/python benchmarks/analysis_throughput.py --run RUN --device cuda

``--device cuda`` runs everything (reference included) on the GPU; the GPU
figures are then printed the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdlens.builders import build_datasets, build_network, resolve_device
from kdlens.config import load_config
from kdlens.explain.analyze import AnalysisSettings, analyze_role, role_points
from kdlens.explain.paper import CHECK_STEP, ENTROPY_TARGET, NOISY_COPIES, STEPS, paper_defaults
from kdlens.seeding import derive_seed
from kdlens.store import RunDirectory
from kdlens.train.distributed import run_in_processes, world

from estimator_agreement import jaccard, spearman  # benchmarks/ is on sys.path when this script runs


def authors_sigma(model: nn.Module, layer: str, image: torch.Tensor, grid: int, lam: float,
                  generator: torch.Generator) -> torch.Tensor:
    """One image at one checkpoint, the authors' way: the kept sigma (grid * grid,)."""
    size = image.shape[-1]

    def noisy(sigma, noise):  # NoiseLayer.forward
        sigma.data.clamp_(0.001, 1)
        out = image + F.interpolate(sigma.expand(noise.shape[0], 1, grid, grid), size=size, mode="nearest") * noise
        penalty = torch.mean(torch.log(sigma)) + 0.5 * math.log(2 * math.pi) + 0.5
        return out, penalty

    def draw():
        return torch.randn((NOISY_COPIES, *image.shape[1:]), generator=generator, device=generator.device).to(image)

    criterion, relu = nn.MSELoss(), nn.ReLU()
    with torch.no_grad():
        noise_image, _ = noisy(torch.full((1, 1, grid, grid), 0.01, device=image.device), draw())
        origin = relu(model.forward_to(image, layer)).expand(NOISY_COPIES, -1)
        sigma_f = criterion(relu(model.forward_to(noise_image, layer)), origin)
    if sigma_f.item() == 0:
        return torch.full((grid * grid,), 0.01)
    sigma = nn.Parameter(torch.full((1, 1, grid, grid), 0.01, device=image.device))
    optimizer = torch.optim.SGD([sigma], lr=1e-4)
    sigmas, entropy = [], np.zeros(STEPS)
    for step in range(STEPS):
        noise_image, penalty = noisy(sigma, draw())
        sigmas.append(sigma.detach().clone())
        loss = criterion(relu(model.forward_to(noise_image, layer)), origin) / sigma_f - penalty * lam
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        entropy[step] = float(penalty.detach())
        if step == CHECK_STEP:
            if np.max(entropy[: CHECK_STEP + 1]) > ENTROPY_TARGET:
                break
            lam = lam * 1.5
    best = int(np.argmin(np.abs(entropy[: len(sigmas)] - ENTROPY_TARGET)))
    return sigmas[best].reshape(-1).cpu()


def reference(run: RunDirectory, role: str, layer: str, epochs: list[int], indices: list[int], images,
              num_classes: int, grid: int, seed: int, device: torch.device, frozen: bool) -> tuple[float, dict]:
    """Seconds, and the kept sigma per (epoch, index)."""
    config = load_config(run.config_path)
    spec = config.resolved_teacher_model if role == "teacher" else config.model
    lam = paper_defaults(spec.arch)[0]
    sigmas = {}
    began = time.perf_counter()
    for epoch in epochs:
        model = build_network(spec, config, num_classes, init=role)
        model.load_state_dict(run.role(role).load(epoch)["model"])
        model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(not frozen)
        for index, image in zip(indices, images):
            generator = torch.Generator(device).manual_seed(derive_seed(seed, role, epoch, index))
            sigmas[epoch, index] = authors_sigma(model, layer, image[None].to(device), grid, lam, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began, sigmas


def scratch_run(run: RunDirectory, role: str, device: torch.device) -> RunDirectory:
    """A fresh run directory with the run's config (its device set) and a link to the role's checkpoints."""
    root = Path(tempfile.mkdtemp(prefix="kdlens-throughput-"))
    text = run.config_path.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("device:")]
    (root / "config.yaml").write_text("\n".join([f"device: {device}", *lines]) + "\n")
    os.symlink((run.root / role).resolve(), root / role)
    return RunDirectory(root)


def _shard(root: str, role: str, settings: AnalysisSettings, count: int, epochs: list[int], threads: int) -> None:
    """One process's shard of the analysis (``run_in_processes`` made the process group)."""
    torch.set_num_threads(threads)
    analyze_role(root, role, settings, count, epochs=epochs, progress=False, shard=world())


def timed_analysis(run: RunDirectory, role: str, settings: AnalysisSettings, count: int, epochs: list[int],
                   datasets, device: torch.device, nproc: int = 1, threads: int = 1):
    """Seconds and the analysis, computed in ``nproc`` processes of ``threads`` threads each
    (as ``kdlens analyze --nproc``: each takes its share of the batches) when ``nproc`` > 1."""
    scratch = scratch_run(run, role, device)
    try:
        began = time.perf_counter()
        if nproc > 1:
            settings = dataclasses.replace(settings, batch_size=math.ceil(count / nproc))
            run_in_processes(_shard, nproc, str(scratch.root), role, settings, count, epochs, threads)
        analysis = analyze_role(scratch, role, settings, count, epochs=epochs, datasets=datasets, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began, analysis
    finally:
        shutil.rmtree(scratch.root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a trained run directory (e.g. runs/demo/run after make demo)")
    parser.add_argument("--role", default="teacher")
    parser.add_argument("--layer", default="fc1")
    parser.add_argument("--samples", type=int, default=8, help="analysis images (default 8)")
    parser.add_argument("--checkpoints", type=int, default=4, help="checkpoints, evenly spread over the series")
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nproc", type=int, default=0,
                        help="also time kdlens in N processes of threads/N threads each (default: one per thread)")
    parser.add_argument("--frozen-reference", action="store_true", help="also time the reference with frozen weights")
    parser.add_argument("--cold", action="store_true", help="also time converged with every checkpoint cold")
    parser.add_argument("--no-training", action="store_true", help="skip the training-overhead measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    run = RunDirectory(args.run)
    config = load_config(run.config_path)
    datasets = build_datasets(config)
    available = run.role(args.role).epochs()
    if len(available) < 1:
        raise SystemExit(f"{run.root / args.role} has no checkpoints")
    nproc = args.nproc or (args.threads if device.type == "cpu" else 1)
    picks = sorted(set(np.linspace(0, len(available) - 1, min(args.checkpoints, len(available))).round().astype(int)))
    epochs = [available[i] for i in picks]

    paper = AnalysisSettings(layer=args.layer, estimator="paper", grid=args.grid, batch_size=args.samples)
    converged = AnalysisSettings(layer=args.layer, grid=args.grid, batch_size=args.samples)
    cold = AnalysisSettings(layer=args.layer, grid=args.grid, batch_size=args.samples, warm_start=False)
    timings: dict[str, list[float]] = {}
    results = {}
    units = args.samples * len(epochs)
    print(f"{args.run} {args.role} at {args.layer}: {args.samples} images x {len(epochs)} checkpoints {epochs}, "
          f"{args.grid}x{args.grid} grid, {device}, {args.threads} threads, median of {args.runs} runs")
    for _ in range(args.runs):
        seconds, results["paper"] = timed_analysis(run, args.role, paper, args.samples, epochs, datasets, device)
        timings.setdefault("kdlens paper", []).append(seconds)
        indices = results["paper"].indices
        images = [datasets[0][i].image for i in indices]
        common = (run, args.role, args.layer, epochs, indices, images, len(datasets[0].classes), args.grid,
                  paper.seed, device)
        seconds, results["reference"] = reference(*common, frozen=False)
        timings.setdefault("reference (authors, as released)", []).append(seconds)
        if args.frozen_reference:
            seconds, _ = reference(*common, frozen=True)
            timings.setdefault("reference, frozen weights", []).append(seconds)
        seconds, results["converged"] = timed_analysis(run, args.role, converged, args.samples, epochs, datasets,
                                                       device)
        timings.setdefault("kdlens converged (warm starts)", []).append(seconds)
        if nproc > 1:
            split = dict(nproc=nproc, threads=max(1, args.threads // nproc))
            seconds, results["paper"] = timed_analysis(run, args.role, paper, args.samples, epochs, datasets,
                                                       device, **split)
            timings.setdefault(f"kdlens paper, {nproc} processes", []).append(seconds)
            seconds, results["converged"] = timed_analysis(run, args.role, converged, args.samples, epochs,
                                                           datasets, device, **split)
            timings.setdefault(f"kdlens converged, {nproc} processes", []).append(seconds)
        if args.cold:
            seconds, results["cold"] = timed_analysis(run, args.role, cold, args.samples, epochs, datasets, device)
            timings.setdefault("kdlens converged (all cold)", []).append(seconds)

    base = statistics.median(timings["reference (authors, as released)"])
    print(f"\n{'procedure':36s} {'s per image-ckpt':>17s} {'throughput vs reference':>24s}   runs (s)")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:36s} {median / units:17.3f} {base / median:23.2f}x   "
              + " ".join(f"{v:.1f}" for v in values))

    # paper: equal outputs
    analysis = results["paper"]
    ours = analysis.entropy  # (E, N, n)
    theirs = torch.stack([torch.stack([results["reference"][e, i] for i in indices]) for e in epochs]).log() \
        + 0.5 * math.log(2 * math.pi * math.e)
    difference = (ours - theirs.to(ours)).abs()
    gap = difference.max().item()
    apart = int((difference.amax(2) > 1e-4).sum())
    reference_analysis = dataclasses.replace(analysis, entropy=theirs.to(ours))
    ours_points = torch.stack([p.is_point for p in role_points(analysis, paper)])
    their_points = torch.stack([p.is_point for p in role_points(reference_analysis, paper)])
    print(f"\npaper vs reference: largest entropy difference {gap:.2e} nats; image-checkpoints with a difference "
          f"above 1e-4: {apart} of {units}; knowledge-point labels that differ "
          f"{int((ours_points != their_points).sum())} of {ours_points.numel()}")

    # converged: agreement with paper, and warm against cold
    conv_points = torch.stack([p.is_point for p in role_points(results["converged"], converged)])
    rho = statistics.mean(spearman(results["converged"].entropy[e, n], ours[e, n])
                          for e in range(len(epochs)) for n in range(args.samples))
    print(f"converged vs paper: mean per-image Spearman {rho:.3f} (fidelity bar >= 0.8), knowledge-point Jaccard "
          f"{jaccard(conv_points, ours_points):.3f}")
    if args.cold:
        cold_points = torch.stack([p.is_point for p in role_points(results["cold"], cold)])
        print(f"converged warm vs cold: knowledge-point Jaccard {jaccard(conv_points[1:], cold_points[1:]):.3f} "
              f"over the warm-started checkpoints (fidelity bar >= 0.9)")

    if not args.no_training:
        import training_overhead

        print()
        training_overhead.report(training_overhead.measure(train=600, test=1000, epochs=4, runs=args.runs,
                                                           threads=args.threads))


if __name__ == "__main__":
    main()
