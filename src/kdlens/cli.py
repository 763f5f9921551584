"""The ``kdlens`` command: parses arguments, calls the library, prints."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from kdlens import __version__
from kdlens.config import load_config
from kdlens.errors import ConfigError, KdlensError, MissingFileError, UsageError


def output_directory(value: str | Path, option: str = "--out") -> Path:
    """``value`` as a directory to write into: refused when it names something that is not a directory."""
    path = Path(value)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {str(value)!r}: {str(parent)!r} is a file; expected a directory to write into")
            break
    return path


def _train(args: argparse.Namespace) -> int:
    from kdlens.store import RunDirectory
    from kdlens.train import train_roles
    from kdlens.train.distributed import is_writer, join_torchrun, run_in_processes

    config = load_config(args.config)
    out = output_directory(args.out if args.out else Path("runs") / Path(args.config).stem)
    roles = args.roles.split(",") if args.roles else None
    if roles:
        unknown = sorted(set(roles) - {"teacher", "baseline", "student"})
        if unknown:
            raise ConfigError(f"--roles {args.roles!r}: unknown role {unknown[0]!r}; expected teacher, baseline, student")
    began = time.perf_counter()
    if args.nproc < 1:
        raise UsageError(f"--nproc {args.nproc}: expected an integer >= 1")
    if join_torchrun():  # data parallel over torchrun's ranks; rank 0 writes and reports
        run = train_roles(config, out, roles, progress=not args.quiet and is_writer())
        if not is_writer():
            return 0
    elif args.nproc > 1:  # data parallel over local processes
        run_in_processes(functools.partial(train_roles, progress=False), args.nproc, config, out, roles)
        run = RunDirectory(out)
    else:
        run = train_roles(config, out, roles, progress=not args.quiet)
    print(f"trained {', '.join(roles or config.train)} in {time.perf_counter() - began:.0f}s -> {run.root}")
    for role in roles or config.train:
        store = run.role(role)
        latest = store.latest()
        if latest is not None:
            metrics = store.load(latest, required=("metrics",))["metrics"]
            print(f"  {role:9s} epoch {latest:3d}  test accuracy {metrics['test_accuracy']:.3f}  "
                  f"train accuracy {metrics['train_accuracy']:.3f}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from kdlens.explain.analyze import AnalysisSettings, analyze_run, summarize_role
    from kdlens.explain.shards import analyze_in_processes, analyze_under_torchrun, parse_shard, torchrun_shard
    from kdlens.modalities import modality_of
    from kdlens.store import RunDirectory, atomic_write_json

    run = RunDirectory(args.run)
    if not run.config_path.is_file():
        raise MissingFileError(f"{args.run!r} is not a kdlens run directory (no config.yaml)")
    for option, value, least in (("--samples", args.samples, 1), ("--grid", args.grid, 1), ("--nproc", args.nproc, 1),
                                 ("--steps", args.steps, 1), ("--max-epochs", args.max_epochs, 2)):
        if value is not None and value < least:
            raise UsageError(f"{option} {value}: expected an integer >= {least}")
    # analyze_run refuses a run without checkpoints, so there is a summary to print below
    layer = args.layer or load_config(run.config_path).student.layer
    settings = AnalysisSettings(layer=layer, estimator=args.estimator, grid=args.grid, threshold=args.threshold,
                                baseline=args.baseline, steps=args.steps, entropy_weight=args.entropy_weight)
    options = dict(split=args.split, max_epochs=args.max_epochs)
    shard = parse_shard(args.shard) if args.shard else torchrun_shard()
    if args.shard:  # one shard by hand: compute it into the cache; a plain call assembles
        analyze_run(run, settings, args.samples, shard=shard, progress=not args.quiet, **options)
        print(f"shard {shard[0]}/{shard[1]} of layer {layer} computed into {run.root / 'analysis'}; when every "
              f"shard is done, `kdlens analyze {args.run}` with the same options assembles them")
        return 0
    if shard is not None:  # under torchrun: every rank computes its shard, rank 0 reports
        analyses = analyze_under_torchrun(run, settings, args.samples, shard, **options)
        if analyses is None:
            return 0
    elif args.nproc > 1:
        analyses = analyze_in_processes(run, settings, args.samples, args.nproc, **options)
    else:
        analyses = analyze_run(run, settings, args.samples, progress=not args.quiet, **options)
    summaries = {role: summarize_role(analysis, settings) for role, analysis in analyses.items()}
    rule = next(iter(summaries.values()))["rule"]
    b = f"{rule['threshold']:g}" + (" x background std" if rule["relative"] else "")
    out = (run.root / "analysis" / f"{settings.layer}-{settings.key()}"
           / f"summary-b{rule['threshold']:g}{'std' if rule['relative'] else ''}-{settings.baseline}.json")
    atomic_write_json(out, summaries)
    keys = ("n_fg", "n_bg", "lambda", "d_mean", "d_var", "rho", "accuracy")
    units = modality_of(load_config(run.config_path).data).describe_units(args.grid)
    print(f"layer {layer}, estimator {args.estimator}, {args.samples} {args.split} samples, "
          f"{units}, b = {b}, H_bar per {args.baseline}")
    print(f"{'':9s}" + "".join(f"{k:>10s}" for k in keys))
    for role, summary in summaries.items():
        cells = (summary.get(k) for k in keys)
        print(f"{role:9s}" + "".join(f"{v:10.3f}" if v is not None else f"{'-':>10s}" for v in cells))
    print(f"-> {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kdlens.config import dump_config
    from kdlens.experiment import demo_config, demo_text, run_demo

    if args.print_config:
        text = dump_config(demo_config(True, args.modality)) if args.quick else demo_text(args.modality)
        print(text, end="")
        return 0
    began = time.perf_counter()
    files = run_demo(output_directory(args.out), modality=args.modality, quick=args.quick, split=args.split,
                     progress=not args.quiet, estimators=args.estimator.split(",") if args.estimator else None)
    print(f"demo finished in {time.perf_counter() - began:.0f}s")
    for name, path in files.items():
        print(f"  {name:10s} {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from kdlens.compare import load_compare_config, run_comparison

    from kdlens.compare.runner import train_comparison
    from kdlens.train.distributed import is_writer, join_torchrun, run_in_processes

    config = load_compare_config(args.config)
    if args.explain:
        config.explain.enabled = True
    out = output_directory(args.out if args.out else Path("runs") / Path(args.config).stem)
    if args.nproc < 1:
        raise UsageError(f"--nproc {args.nproc}: expected an integer >= 1")
    began = time.perf_counter()
    if join_torchrun():  # every rank trains its slice of each batch; rank 0 analyses and reports
        files = run_comparison(config, out, progress=not args.quiet and is_writer())
        if not is_writer():
            return 0
    else:
        if args.nproc > 1:  # train in N local processes, then analyse and report here (nothing left to train)
            run_in_processes(functools.partial(train_comparison, progress=False), args.nproc, config, out)
        files = run_comparison(config, out, progress=not args.quiet)
    print(f"compare finished in {time.perf_counter() - began:.0f}s")
    print((out / "table.md").read_text())
    for name, path in files.items():
        print(f"  {name:24s} {path}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from kdlens.validate import format_report, run_validation

    began = time.perf_counter()
    summary = run_validation(output_directory(args.out), quick=args.quick, progress=not args.quiet,
                             modality=args.modality)
    print(f"validate finished in {time.perf_counter() - began:.0f}s"
          + (" (quick)" if args.quick else "") + (" on point clouds" if args.modality == "points" else ""))
    print(format_report(summary))
    for name, path in summary["files"].items():
        print(f"  {name:8s} {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlens", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kdlens {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train the teacher, baseline and student a config names")
    train.add_argument("--config", required=True, help="experiment config (YAML)")
    train.add_argument("--out", help="run directory (default: runs/<config name>); an existing run resumes")
    train.add_argument("--roles", help="comma-separated subset of teacher,baseline,student")
    train.add_argument("--nproc", type=int, default=1,
                       help="data parallel over N local processes (each a slice of every batch); under torchrun "
                            "the ranks are the processes")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(handler=_train)

    analyze = commands.add_parser("analyze", help="knowledge points of every checkpoint of a run (cached, resumable)")
    analyze.add_argument("run", help="run directory made by `kdlens train`")
    analyze.add_argument("--layer", help="named layer to measure (default: the layer the student is distilled at, "
                         "fc1 in the image and point demos, the last hidden layer for text)")
    analyze.add_argument("--samples", type=int, default=16, help="number of fixed samples (default 16)")
    analyze.add_argument("--split", default="train", choices=["train", "test"],
                         help="where the samples come from (the paper used training images)")
    analyze.add_argument("--max-epochs", type=int, help="analyse at most this many checkpoints per model")
    analyze.add_argument("--grid", type=int, default=16,
                         help="units of an image: a GxG grid (default 16); a point cloud has one unit per point")
    analyze.add_argument("--estimator", default="converged", choices=["converged", "paper"],
                         help="converged: kdlens's optimum of Eq. 4 (default); paper: the authors' recipe")
    analyze.add_argument("--threshold", type=float, default=None,
                         help="b: the estimator's default when omitted (converged: 1 background std; paper: 0.2, "
                              "0.25 for AlexNet and DGCNN, 0.5 for PointNet)")
    analyze.add_argument("--baseline", default="sample", choices=["sample", "dataset"],
                         help="H_bar per sample (the paper's text, default) or over the analysed samples (the authors' code)")
    analyze.add_argument("--entropy-weight", type=float, default=None,
                         help="paper estimator: lambda of its entropy term (default: the authors' 7 for VGG and "
                              "AlexNet, 6 for ResNet; 7 for point-cloud models, whose lambda they did not publish)")
    analyze.add_argument("--steps", type=int, default=300,
                         help="converged estimator: optimisation steps from a cold start (default 300)")
    analyze.add_argument("--nproc", type=int, default=1,
                         help="split the work across N local processes (the answer is a single process's with the "
                              "same threads per process); under torchrun the ranks split it")
    analyze.add_argument("--shard", help="K/N: compute only shard K of N into the run's cache (one per machine "
                                         "sharing the run directory); then run without --shard to assemble")
    analyze.add_argument("--quiet", action="store_true", help="no progress output")
    analyze.set_defaults(handler=_analyze)

    compare = commands.add_parser("compare", help="train one teacher and many distillation methods; Table-1-style report")
    compare.add_argument("--config", required=True, help="compare config (YAML), e.g. configs/compare-synthetic.yaml")
    compare.add_argument("--out", help="output directory (default: runs/<config name>); an existing one resumes")
    compare.add_argument("--nproc", type=int, default=1,
                         help="train data parallel over N local processes (each a slice of every batch), then "
                              "analyse and report in this one; under torchrun the ranks are the processes")
    compare.add_argument("--explain", action="store_true",
                         help="also measure the knowledge points of every compared student (the config's explain "
                              "section; N_fg, N_bg, lambda, D_mean, D_var, rho and the hypotheses per method)")
    compare.add_argument("--quiet", action="store_true", help="no progress output")
    compare.set_defaults(handler=_compare)

    demo = commands.add_parser("demo", help="the whole paper on the built-in synthetic data, with its report")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo); resumes")
    demo.add_argument("--quick", action="store_true", help="a smaller version for smoke tests")
    demo.add_argument("--split", default="train", choices=["train", "test"],
                      help="where the analysed samples come from (the paper used training images)")
    demo.add_argument("--estimator", help="converged, paper, or both comma-separated (default: converged,paper)")
    demo.add_argument("--modality", default="image", choices=["image", "points", "text"],
                      help="image: VGG-11 on synthetic shapes (default); points: PointNet on synthetic point clouds; "
                      "text: BERT on synthetic sentences")
    demo.add_argument("--print-config", action="store_true",
                      help="print the demo's config (with --quick: the quick one) and exit; a start for your own")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.set_defaults(handler=_demo)

    validate = commands.add_parser(
        "validate", help="check the knowledge-point measurement on planted knowledge (object vs background cue)")
    validate.add_argument("--out", required=True, help="output directory; trained networks in it are reused")
    validate.add_argument("--modality", choices=["image", "points", "text"], default="image",
                          help="images (a VGG-11 on synthetic shapes, default), point clouds (a PointNet on "
                               "synthetic point clouds, the background clouds' family as the planted cue) or text "
                               "(a BERT on synthetic sentences, a neutral filler word as the planted cue)")
    validate.add_argument("--quick", action="store_true",
                          help="a smaller version (on 2 cores about a minute for images, three for point clouds)")
    validate.add_argument("--quiet", action="store_true", help="no progress output")
    validate.set_defaults(handler=_validate)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise BrokenPipeError again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a reader that left shows here, inside the try, not at exit
        return code
    except KdlensError as exc:  # what a user can cause; anything else is a bug and keeps its traceback
        print(f"kdlens: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kdlens ... | head`: the reader left; stop quietly, as Unix tools do
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        print("kdlens: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
