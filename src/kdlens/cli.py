"""The ``kdlens`` command: parses arguments, calls the library, prints."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from kdlens import __version__
from kdlens.config import ConfigError, load_config


def _train(args: argparse.Namespace) -> int:
    from kdlens.train import train_roles

    config = load_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    roles = args.roles.split(",") if args.roles else None
    if roles:
        unknown = sorted(set(roles) - {"teacher", "baseline", "student"})
        if unknown:
            raise ConfigError(f"--roles {args.roles!r}: unknown role {unknown[0]!r}; expected teacher, baseline, student")
    began = time.perf_counter()
    run = train_roles(config, out, roles, progress=not args.quiet)
    print(f"trained {', '.join(roles or config.train)} in {time.perf_counter() - began:.0f}s -> {run.root}")
    for role in roles or config.train:
        store = run.role(role)
        latest = store.latest()
        if latest is not None:
            metrics = store.load(latest)["metrics"]
            print(f"  {role:9s} epoch {latest:3d}  test accuracy {metrics['test_accuracy']:.3f}  "
                  f"train accuracy {metrics['train_accuracy']:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlens", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kdlens {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train the teacher, baseline and student a config names")
    train.add_argument("--config", required=True, help="experiment config (YAML)")
    train.add_argument("--out", help="run directory (default: runs/<config name>); an existing run resumes")
    train.add_argument("--roles", help="comma-separated subset of teacher,baseline,student")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(handler=_train)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"kdlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdlens: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
