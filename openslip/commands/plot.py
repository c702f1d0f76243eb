"""`openslip plot RUN_DIR`: PNG curves of a training run."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="write PNG curves of a run's metrics", description=__doc__)
    p.add_argument("run_dir", help="a training run directory (holding metrics.jsonl)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from openslip.plot import plot_run

    paths = plot_run(args.run_dir)
    print(f"wrote {paths[0]} and {len(paths) - 1} per-metric plots in {paths[0].parent}")
    return 0
