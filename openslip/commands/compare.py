"""`openslip compare [--methods ...] [--seeds ...] [--eval-sets ...] [key=value ...] --out-dir DIR`: the paper's
experiment in one resumable command (see `openslip.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="pre-train CLIP, SimCLR, SLIP (and CLIP with SimCLR augmentation) alike, evaluate all, tabulate",
        description="The SLIP paper's comparison in one resumable command: every method is pre-trained with the same "
        "data, steps, batch, image size and seed (the demo world and tiny models by default), then evaluated with "
        "every evaluation that applies. Writes OUT_DIR/results.{json,md,png}. Rerun the same command to continue.",
    )
    p.add_argument("--out-dir", default="runs/compare", help="experiment directory (default: runs/compare)")
    p.add_argument(
        "--methods",
        type=_csv,
        default=None,
        help="comma-separated: clip, clip_aug, simclr, slip (default: these four), siglip, slip_sigmoid",
    )
    p.add_argument("--seeds", type=_ints, default=(0,), help="comma-separated pre-training seeds (default: 0)")
    p.add_argument(
        "--eval-sets",
        type=_csv,
        default=None,
        help="comma-separated: demo task names, [CATALOG:]TEST[@TRAIN][#PROMPTS.json] labelled sets (folder, CSV, "
        "shards; PROMPTS: the set's classnames / templates / metric), retrieval:SPEC "
        "(default: demo_shapes,demo_colours,demo)",
    )
    p.add_argument(
        "--hparams",
        choices=("paper", "shared", "sweep"),
        help="optimiser settings: paper (each objective's published lr / wd), shared (one lr / wd for all: the "
        "recipe's, or optim.lr= optim.wd=), sweep (each method's best of a grid, chosen on a validation split of "
        "the first probe set's train side); default: paper for a paper recipe, else shared",
    )
    p.add_argument(
        "--sweep-lr",
        type=_floats,
        help="--hparams sweep: factors of the shared lr to train at (default 0.3,1,3)",
    )
    p.add_argument(
        "--sweep-wd",
        type=_floats,
        help="--hparams sweep: factors of the shared wd to train at (default 1: the wd is not swept)",
    )
    p.add_argument("--finetune", action="store_true", help="also finetune every model end to end (slow)")
    p.add_argument("--finetune-epochs", type=int, help="override the finetuning preset's epochs")
    p.add_argument(
        "--fewshot",
        action="store_true",
        help="also the few-shot ridge probe (1, 5, 10, 25 images per class, 3 draws; its column: the 25-shot mean)",
    )
    p.add_argument(
        "--num-test",
        type=int,
        help="images per test set: a demo task's count; at most N of a file set, a seeded subsample (all)",
    )
    p.add_argument(
        "--num-train",
        type=int,
        help="images per probe train split: a demo task's count; at most N of a file set, seeded (all)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--device", help="evaluation device (default: cuda if available, else cpu)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="training settings for every run (e.g. train.steps=600), or METHOD:key=value for one method",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from openslip.compare import CompareConfig, run_compare
    from openslip.compare.experiment import DEFAULT_EVAL_SETS
    from openslip.compare.methods import DEFAULT_METHODS
    from openslip.outputs import check_output_dir

    # A run or checkpoint directory is never an experiment's folder (compare also refuses any other folder that
    # holds files but no experiment.json, when it reads the folder).
    check_output_dir(args.out_dir, option="--out-dir", own=None)

    from openslip.compare.experiment import SWEEP_LR, SWEEP_WD
    from openslip.errors import ConfigError

    if (args.sweep_lr or args.sweep_wd) and args.hparams != "sweep":
        raise ConfigError("--sweep-lr / --sweep-wd set the grid of --hparams sweep; add --hparams sweep")
    cc = CompareConfig(
        out_dir=args.out_dir,
        methods=args.methods if args.methods is not None else DEFAULT_METHODS,
        seeds=args.seeds,
        eval_sets=args.eval_sets if args.eval_sets is not None else DEFAULT_EVAL_SETS,
        overrides=tuple(args.overrides),
        finetune=args.finetune,
        finetune_epochs=args.finetune_epochs,
        fewshot=args.fewshot,
        num_test=args.num_test,
        num_train=args.num_train,
        bootstrap=args.bootstrap,
        device=args.device,
        hparams=args.hparams,
        sweep_lr=args.sweep_lr or SWEEP_LR,
        sweep_wd=args.sweep_wd or SWEEP_WD,
    )
    run_compare(cc, log=lambda msg: print(msg, flush=True))
    from openslip import distributed

    if distributed.is_main():
        print((Path(cc.out_dir) / "results.md").read_text(), end="")
        print(f"wrote {cc.out_dir}/results.json, results.md, results.png")
    return 0
