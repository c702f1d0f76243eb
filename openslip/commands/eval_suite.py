"""`openslip eval suite ROOT --model MODEL [--output FILE.json] [key=value ...]`: zero-shot on every catalog set under
ROOT in one command (one model load, one table, one JSON), as CLIP_benchmark and big_vision's evaluators run a
benchmark folder. Which folder is which set: `openslip.eval.catalog_tree`. Each set is opened and scored through
the same door as `openslip eval zeroshot --dataset PATH --catalog NAME` (`open_task_set`, ``EVALS["zeroshot"]``).

A set that cannot be opened or read is one line on stderr naming it and why, and the others still run; the exit
code is 0 when at least one set was scored (the summary says how many were skipped), else one error line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from functools import partial
from typing import Any

from openslip.commands._common import EVAL_FLAGS, add_model_args, finish, setup
from openslip.errors import ConfigError, UserError

NAME = "eval suite"


def add_suite_parser(tasks: argparse._SubParsersAction, settings: Any, option_key: Any, bare_values: Any) -> None:
    from openslip.eval.catalog import DEFAULT_PROMPTS, PROMPT_SETS
    from openslip.eval.sets import TASK_KEYS

    s = tasks.add_parser(
        "suite",
        help="zero-shot on every catalog set under a folder: one table, one JSON",
        description="Zero-shot classification of every catalog set under ROOT, each with its catalog entry's class "
        "names, templates and metric (the reference's protocol). ROOT/NAME/ holds the set of catalog entry NAME "
        "(`openslip eval zeroshot --list`; case, '-' and '_' ignored), read from ROOT/NAME/SPLIT/, "
        "ROOT/NAME/SPLIT.csv or ROOT/NAME/ itself, SPLIT being the split the paper reports. A set that is missing "
        "or malformed is one line naming it, and the rest still run.",
    )
    add_model_args(s)
    s.set_defaults(
        batch_size=None,
        num_workers=None,
        func=run_suite,
        command_name=NAME,
        overrides_of=settings,
        option_key=partial(option_key, "suite"),
        option_bare_values=bare_values,
    )
    s.add_argument("root", metavar="ROOT", help="folder with one folder per catalog set (ROOT/NAME/)")
    s.add_argument(
        "--prompts",
        choices=PROMPT_SETS,
        default=DEFAULT_PROMPTS,
        help="the catalog's class names and templates: the 2021 reference's (default) or clip-benchmark's",
    )
    s.add_argument("--output", metavar="FILE.json", help="write every set's metrics and protocol as JSON")
    s.add_argument("--cache-dir", metavar="DIR", help="cache features here (keyed by model weights and dataset)")
    s.add_argument("--seed", type=int, help="seed (default 0; key=seed)")
    s.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=f"evaluation options, e.g. batch_size=64 (keys: {', '.join(TASK_KEYS['suite'])})",
    )


# the EvalOptions fields the suite's options write (the other eval commands' flags, less the probes')
FLAGS = {k: v for k, v in EVAL_FLAGS.items() if k not in ("features", "fewshot_shots", "fewshot_seeds")}


def _say(line: str) -> None:
    from openslip import distributed

    if distributed.is_main():
        print(f"openslip {NAME}: {line}", file=sys.stderr, flush=True)


def run_suite(args: argparse.Namespace) -> int:
    from openslip.eval.catalog_tree import find_catalog_sets
    from openslip.eval.preprocess import PROTOCOL_PREPROCESS
    from openslip.eval.sets import SetRequest, open_task_set, task_options
    from openslip.eval.suite import EVALS

    given = {key: getattr(args, key) for key in FLAGS if getattr(args, key, None) is not None}
    options = task_options("suite", {k: (f"{FLAGS[k]} {v}", v) for k, v in given.items()}, args.overrides)
    tree = find_catalog_sets(args.root)  # before the model loads: a wrong ROOT costs nothing
    if not tree.sets and not tree.skipped:
        ignored = f" (found only: {', '.join(tree.ignored)})" if tree.ignored else ""
        raise ConfigError(
            f"{args.root}: no folder named after a catalog set{ignored}; give ROOT/NAME/ with NAME a catalog entry "
            "(`openslip eval zeroshot --list`)"
        )
    device_given = "device" in given or any(o.partition("=")[0].strip() == "device" for o in args.overrides)
    for key in ("batch_size", "num_workers", "crop_fraction", "image_size"):  # what `setup` checks and resolves
        setattr(args, key, getattr(options, key))
    args.device = str(options.device) if device_given else None
    args.dataset = args.root  # an input `--output` must not overwrite
    model, device = setup(args)
    options = replace(options, device=device, image_size=args.image_size)
    zeroshot = EVALS.get("zeroshot")
    if model.cfg.text is None:
        raise ConfigError(f"eval suite scores zero-shot, and {model.cfg.name} has no text tower (SimCLR only)")
    if tree.ignored:
        _say(f"ignored under {args.root} (no catalog set of that name): {', '.join(tree.ignored)}")
    skipped = dict(tree.skipped)
    for folder, why in tree.skipped.items():
        _say(f"skipped {folder}: {why}")
    crop = options.crop_fraction or PROTOCOL_PREPROCESS["zeroshot"].crop_fraction
    results: dict[str, dict[str, Any]] = {}
    for found in tree.sets:
        where = str(found.path or found.folder)
        if found.problem is not None:
            skipped[found.name] = f"{where}: {found.problem}"
            _say(f"skipped {found.name}: {skipped[found.name]}")
            continue
        try:
            request = SetRequest(dataset=where, catalog=found.name, prompts=args.prompts)
            es = open_task_set("zeroshot", request, options, inputs=args.inputs)
            es.prompts_from = f"catalog {found.name} ({args.prompts} prompts)"
            result = zeroshot.run(model, es, options)
        except UserError as err:  # a malformed set: say which and why, and score the others
            why = str(err) if where in str(err) else f"{where}: {err}"  # the path once
            skipped[found.name] = why
            _say(f"skipped {found.name}: {why}")
            continue
        m = result.metrics
        results[found.name] = {
            "path": where,
            "metric": m["metric"],
            "score": m["score"],
            "num_samples": int(len(es.test)),
            "num_classes": int(es.test.num_classes),
            "protocol": {**es.prompts(), "split": found.split, "crop_fraction": crop},
            "metrics": m,
        }
    if not results:
        raise ConfigError(f"no set under {args.root} could be scored: {len(skipped)} skipped (the lines above)")
    doc = {
        "root": str(args.root),
        "model": str(args.model),
        "prompts": args.prompts,
        "num_scored": len(results),
        "num_skipped": len(skipped),
        "mean_score": sum(r["score"] for r in results.values()) / len(results),
        "sets": results,
        "skipped": skipped,
    }
    return finish(args, "", doc, table=format_suite(doc))


def format_suite(doc: dict[str, Any]) -> str:
    """One row per scored set (its metric and score), their mean, and how many were skipped."""
    sets = doc["sets"]
    title = (
        f"zero-shot suite {doc['root']}: {doc['num_scored']} set(s) scored, {doc['num_skipped']} skipped "
        f"({doc['prompts']} prompts)"
    )
    width = max([len(n) for n in sets] + [8])
    header = f"{'set':<{width}}  {'images':>7}  {'classes':>7}  {'metric':<15}  {'score':>7}"
    lines = [title, header, "-" * len(header)]
    for name, r in sets.items():
        lines.append(
            f"{name:<{width}}  {r['num_samples']:>7}  {r['num_classes']:>7}  {r['metric']:<15}  {r['score']:>7.2f}"
        )
    lines.append("-" * len(header))
    lines.append(f"{'mean':<{width}}  {'':>7}  {'':>7}  {'':<15}  {doc['mean_score']:>7.2f}")
    return "\n".join(lines)
