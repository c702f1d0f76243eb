"""`openslip plot RUN_DIR [RUN_DIR ...] [--out DIR]`: PNG curves of training runs (several: overlaid)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="write PNG curves of runs' metrics (several runs: overlaid)", description=__doc__)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training run directories (holding metrics.jsonl)")
    p.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR/plots; several runs: ./plots)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from openslip.plot import plot_runs

    paths = plot_runs(args.run_dirs, args.out)
    print(f"wrote {paths[0]} and {len(paths) - 1} per-metric plots in {paths[0].parent}")
    return 0
