"""`openslip train [--config FILE.yaml] [key.path=value ...]`: pre-train SLIP / CLIP / SimCLR."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="pre-train a model (default: a tiny SLIP on the built-in demo world)",
        description="Pre-train SLIP / CLIP / SimCLR. Settings are key.path=value overrides on a recipe "
        "(recipe=NAME, default demo), e.g. `openslip train model=clip_vit_tiny train.steps=300`. "
        "Multi-process: `torchrun --nproc-per-node N -m openslip.cli train ...`.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings (overrides on the command line win)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="settings, e.g. train.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from openslip.overrides import parse_overrides
    from openslip.train.recipes import make_config

    if args.list_recipes:
        from openslip.train.recipes import RECIPES

        for name in RECIPES.names():
            doc = (RECIPES.get(name).__doc__ or "").strip().splitlines()
            print(f"{name:28s} {doc[0] if doc else ''}")
        return 0
    cfg = make_config(parse_overrides(args.overrides), yaml_path=args.config)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from openslip.train.loop import train

    summary = train(cfg)
    from openslip.distributed import is_main

    if is_main():
        _report(summary)
    return 0


def _report(summary: dict) -> None:
    m = summary["metrics"]
    lines = [
        f"done: {summary['steps']} steps ({summary['trained_steps']} this run) in {summary['wall_s'] / 60:.1f} min"
    ]
    if "loss" in m:
        accs = "".join(f", {k} {m[k]:.1f}%" for k in ("clip_acc", "ssl_acc") if k in m)
        lines.append(f"final loss {m['loss']:.3f}{accs}")
    for k, v in m.items():
        if k.startswith("zeroshot/"):
            lines.append(f"zero-shot {k.split('/', 1)[1]}: top-1 {v:.1f}%")
    run_dir = summary["run_dir"]
    lines.append(f"run dir:    {run_dir}  (config.yaml, metrics.jsonl)")
    lines.append(f"checkpoint: {summary['checkpoint']}  (openslip.load_model({run_dir!r}))")
    best = summary.get("best")
    if best:  # eval.best_metric: the evaluation that scored best keeps its checkpoint
        where = f"step {best['step']}, {best['metric']} {best['value']:.2f}"
        lines.append(f"best:       {best['path']}  ({where}; openslip.load_model({best['path']!r}))")
    lines.append(f"plots:      openslip plot {run_dir}")
    print("\n".join(lines), file=sys.stdout, flush=True)
