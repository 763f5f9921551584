"""Speed of kdlens's information-discarding engine against the paper authors' plain loop.

Measures the wall-clock time of learning the per-unit noise scales sigma of
Eq. 4 (paper, Sec. 3.1) for N images, two ways, on the same model, inputs,
units, number of steps, process and thread count:

* loop:   the way the paper's authors ran it -- one image at a time, the FULL
          forward pass of the model with the layer's output captured by a
          forward hook (nothing stopped early), written here independently of
          kdlens (same loss and conventions as the engine: log-sigma parameter,
          mean entropy over units, alpha, tau, noise draws per step, Adam, lr,
          delta_f^2 from tau-noise, sigma averaged over the last 10% of steps);
* engine: ``kdlens.explain.information_discarding`` on the whole batch.

It prints both times, their ratio (loop / engine) and how well the results
agree: per-sample Jaccard overlap of the knowledge points (b = 0.2, majority
foreground rule), the fraction of units whose point/no-point label agrees, and
the Pearson correlation of the entropies.  The two draw their noise in a
different order, so agreement is statistical, not exact.

Run (from the repository root; ~1-3 minutes on 2 CPU cores with the defaults):

    PYTHONPATH=src .venv/bin/python benchmarks/discarding_speed.py
    PYTHONPATH=src .venv/bin/python benchmarks/discarding_speed.py --steps 50 --grid 8
    PYTHONPATH=src .venv/bin/python benchmarks/discarding_speed.py --run runs/my-run --role teacher --device cuda
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from pathlib import Path

import torch

from kdlens.data.synthetic import SyntheticShapes
from kdlens.explain import information_discarding
from kdlens.explain.converged import converged_discarding
from kdlens.explain.knowledge_points import knowledge_points
from kdlens.modalities.units import grid_units, unit_foreground_share
from kdlens.models import build_model

ENGINE = {k: p.default for k, p in inspect.signature(converged_discarding).parameters.items()
          if p.default is not inspect.Parameter.empty}
HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)


def load_model(args):
    """(model, image size, description): from a run directory, or a random-init VGG-11."""
    if args.run is None:
        torch.manual_seed(args.seed)
        model = build_model("vgg11", num_classes=10, image_size=args.image_size, width=0.25)
        return model, args.image_size, f"vgg11 width 0.25, RANDOM INIT (seed {args.seed}), {args.image_size}px"
    from kdlens.config import load_config
    from kdlens.store import RunDirectory
    from kdlens.train.protocols import build_network

    config = load_config(Path(args.run) / "config.yaml")
    spec = config.resolved_teacher_model if args.role == "teacher" else config.model
    store = RunDirectory(args.run).role(args.role)
    epoch = store.latest()
    if epoch is None:
        raise SystemExit(f"{args.run}/{args.role} has no checkpoint")
    state = store.load(epoch)["model"]
    # real datasets' configs carry no class count: read it off the last linear layer
    num_classes = getattr(config.data, "num_classes", None) or next(
        v.shape[0] for v in reversed(state.values()) if v.dim() == 2)
    model = build_network(spec, config, num_classes, init="teacher" if args.role == "teacher" else "student")
    model.load_state_dict(state)
    size = config.data.image_size
    return model, size, f"{spec.arch} width {spec.width}, {args.run} {args.role} epoch {epoch}, {size}px"


def paper_loop(model, inputs, layer, units, steps, generator, c=ENGINE):
    """Eq. 4 per image with a full forward pass and a hook; returns entropies (B, n) and valid (B,)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    captured = []
    hook = model.get_submodule(layer).register_forward_hook(lambda m, i, out: captured.append(out))

    def f(z):  # the whole model runs; the layer's output is read from the hook
        captured.clear()
        model(z)
        return captured[0].flatten(1)

    n = int(units.max()) + 1
    window, entropies, valid = max(1, steps // 10), [], []
    try:
        for x in inputs:
            x = x.unsqueeze(0)
            with torch.no_grad():
                f0 = f(x)
                noise = torch.randn((c["variance_samples"], *x.shape[1:]), generator=generator, device=x.device)
                df2 = ((f(x + c["tau"] * noise) - f0) ** 2).sum(1).mean()
            log_sigma = torch.full((n,), math.log(c["tau"]), device=x.device, requires_grad=True)
            opt = torch.optim.Adam([log_sigma], lr=c["lr"])
            log_sum = torch.zeros(n, dtype=torch.float64, device=x.device)
            for step in range(steps):
                sigma = log_sigma.exp()[units]  # (H, W), broadcast over channels
                delta = torch.randn((c["noise_samples"], *x.shape[1:]), generator=generator, device=x.device)
                dist = ((f(x + sigma * delta) - f0) ** 2).sum(1).mean()
                loss = dist / df2 - c["alpha"] * (log_sigma.mean() + HALF_LOG_2PIE)
                opt.zero_grad()
                loss.backward()
                if step >= steps - window:
                    log_sum += log_sigma.detach().double()
                opt.step()
            entropies.append((log_sum / window).float() + HALF_LOG_2PIE)
            valid.append(bool(torch.isfinite(df2) and df2 > 0))
    finally:
        hook.remove()
    return torch.stack(entropies), torch.tensor(valid, device=inputs.device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="run directory (default: a random-init VGG-11, width 0.25)")
    ap.add_argument("--role", default="teacher", help="teacher, baseline or student (with --run)")
    ap.add_argument("--layer", default="fc1", help="layer whose feature is kept (default fc1)")
    ap.add_argument("--samples", type=int, default=8, help="first N test images (default 8)")
    ap.add_argument("--steps", type=int, default=ENGINE["steps"], help=f"default {ENGINE['steps']} (the engine's)")
    ap.add_argument("--grid", type=int, default=16, help="grid x grid units (default 16; e.g. 8 at 32px)")
    ap.add_argument("--image-size", type=int, default=32, help="image size without --run (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build")

    model, size, described = load_model(args)
    model = model.to(device).eval()
    layer = f"stages.{args.layer}" if args.layer in getattr(model, "stages", {}) else args.layer
    data = SyntheticShapes(split="test", num_samples=args.samples, image_size=size, num_classes=10, seed=0)
    inputs = torch.stack([data[i].image for i in range(len(data))]).to(device)
    masks = torch.stack([data[i].mask for i in range(len(data))])
    units = grid_units(size, size, args.grid).to(device)

    def loop(x, steps):
        return paper_loop(model, x, layer, units, steps, torch.Generator(device).manual_seed(args.seed))

    def engine(x, steps):
        r = information_discarding(model, x, args.layer, units, steps=steps, seed=args.seed)
        return r.entropy, r.valid

    timings, cpu, results = {}, {}, {}
    for name, fn in (("loop", loop), ("engine", engine)):
        fn(inputs[:2], 3)  # warm-up
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        results[name] = fn(inputs, args.steps)
        sync(device)
        timings[name], cpu[name] = time.perf_counter() - start, time.process_time() - start_cpu

    foreground = (unit_foreground_share(masks, units.cpu()) >= 0.5)
    points = {k: knowledge_points(h.cpu(), foreground, b=0.2, valid=v.cpu()) for k, (h, v) in results.items()}
    a, b = points["loop"].is_point, points["engine"].is_point
    both = points["loop"].defined & points["engine"].defined
    union, inter = (a | b).sum(1), (a & b).sum(1)
    jaccard = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union, dtype=torch.float))
    h_loop, h_engine = results["loop"][0].cpu()[both], results["engine"][0].cpu()[both]
    pearson = torch.corrcoef(torch.stack([h_loop.flatten(), h_engine.flatten()]))[0, 1]

    print(f"model      {described}")
    print(f"layer      {args.layer}   device {device}   threads {torch.get_num_threads()}")
    print(f"samples    {args.samples}   steps {args.steps}   units {args.grid}x{args.grid} = {args.grid**2}")
    print(f"settings   alpha {ENGINE['alpha']} tau {ENGINE['tau']} lr {ENGINE['lr']} "
          f"noise_samples {ENGINE['noise_samples']} variance_samples {ENGINE['variance_samples']}")
    print(f"loop       {timings['loop']:8.2f} s  ({timings['loop'] / args.samples:.2f} s/sample; "
          f"CPU {cpu['loop']:.1f} s)  per image, full forward + hook")
    print(f"engine     {timings['engine']:8.2f} s  ({timings['engine'] / args.samples:.2f} s/sample; "
          f"CPU {cpu['engine']:.1f} s)  batched, stops at the layer")
    print(f"speed-up   {timings['loop'] / timings['engine']:8.2f} x  (loop / engine, wall clock; "
          f"CPU time {cpu['loop'] / cpu['engine']:.2f} x; other jobs on the machine move both)")
    print("agreement  (statistical: the two draw their noise in a different order)")
    print(f"  knowledge points per sample  loop {a.sum(1).tolist()}  engine {b.sum(1).tolist()}")
    print(f"  Jaccard overlap per sample   {[round(j, 2) for j in jaccard[both].tolist()]}"
          f"  mean {jaccard[both].mean():.3f}  (1 when both have none)")
    print(f"  units labelled alike         {(a == b)[both].float().mean():.3f}")
    print(f"  Pearson r of entropies       {pearson:.3f}  over {h_loop.numel()} (sample, unit) pairs")
    if not bool(both.all()):
        print(f"  left out: {int((~both).sum())} sample(s) undefined for either method")


if __name__ == "__main__":
    main()
