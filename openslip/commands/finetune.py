"""`openslip finetune --model MODEL --dataset TEST [--train TRAIN] [--preset vit_b16|...|demo] [key=value ...]`.

BEiT-style end-to-end finetuning of the image tower (see ``openslip.eval.finetune``): layer-wise lr decay,
drop-path, Mixup / CutMix, label smoothing, RandAugment (``randaug=rand-m9-mstd0.5-inc1``, ``none`` turns
it off) and random erasing (``reprob=0.25``). On a demo task the task's train split trains and its test
split scores: `openslip finetune --model runs/demo --dataset demo_shapes` runs on a laptop CPU in minutes.

The hyper-parameters are `key=value` overrides of the preset's ``FinetuneConfig`` fields, as `openslip train`
takes its settings (`epochs=3 base_lr=1e-2 batch_size=256`); the options are what is not a hyper-parameter:
the model, the data, where results go. An option the command once had for a field (`--epochs 3`) is refused
in one line that names the override (`epochs=3`).

`--out-dir DIR` saves the state after every epoch; the same command run again continues from the last
complete epoch (`--no-resume` starts over) and ends with the weights of an uninterrupted run.
`precision=bf16|fp16` trains under autocast. Multi-process: `torchrun --nproc-per-node N -m openslip.cli
finetune ...`.
"""

from __future__ import annotations

import argparse

# The options the command had before its settings became overrides, whose names differ from the fields they set:
# `--lr 1e-2` is refused with "write `base_lr=1e-2`" (the others, `--epochs` ..., match their field by name).
OPTION_RENAMES = {
    "train_batch_size": "batch_size",
    "lr": "base_lr",
    "mixup": "mixup_alpha",
    "cutmix": "cutmix_alpha",
}


def _settings() -> type:
    """The dataclass the overrides set (imported when needed: `openslip --help` does not load torch)."""
    from openslip.eval.finetune import FinetuneConfig

    return FinetuneConfig


def register(sub: argparse._SubParsersAction) -> None:
    from openslip.commands._common import add_model_args

    p = sub.add_parser(
        "finetune",
        help="finetune the image tower end to end on a labelled set (BEiT recipe)",
        description="Finetune the image tower with layer-wise lr decay, drop-path, mixup/cutmix, label smoothing, "
        "RandAugment, random erasing, AdamW and warm-up + cosine. Presets: vit_s16 / vit_b16 (100 epochs, "
        "20 warm-up, layer decay 0.65, drop-path 0 / 0.1), vit_l16 (50, 5, 0.75, 0.1), demo (CPU-sized); "
        "lr 4e-3 at batch 1024, scaled linearly.",
    )
    add_model_args(p, forward_batch=False)  # the test set is scored batch_size / processes images at a time
    p.add_argument("--dataset", required=True, help="test set: a demo task name, an image folder or a CSV")
    p.add_argument("--train", metavar="DATASET", help="train set (default for demo tasks: the task's train split)")
    p.add_argument("--split", default="test", help="demo split to score on (default: test)")
    p.add_argument("-n", "--num-samples", type=int, help="demo: test images")
    p.add_argument("--num-train", type=int, help="demo: train images (default 4096)")
    p.add_argument("--preset", help="vit_s16, vit_b16, vit_l16 or demo (default: from the model's size)")
    p.add_argument("--out-dir", metavar="DIR", help="save the training state here after every epoch")
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        help="continue from --out-dir's state (default: when there is one); --no-resume starts over",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=1,
        help="score the test set every N epochs and after the last (default 1, as BEiT; 0: the last only)",
    )
    p.add_argument(
        "--report",
        choices=("best", "final"),
        default="best",
        help="the score reported: the best of the evaluations, as BEiT's max_accuracy (default), or the last "
        "epoch's; the result gives both",
    )
    p.add_argument("--save", metavar="FILE.safetensors", help="write the finetuned classifier's weights")
    p.add_argument("--output", metavar="FILE.json", help="write the metrics as JSON")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="the preset's settings to change: epochs, warmup_epochs, batch_size (global, training; scoring passes "
        "its share per process), base_lr (per 1024 images), "
        "min_lr, weight_decay, betas, layer_decay, drop_path, mixup_alpha, cutmix_alpha, label_smoothing, crop_scale, "
        "flip, randaug (none: off), reprob, precision (fp32|bf16|fp16), seed (also the demo world's)",
    )
    p.set_defaults(func=run, overrides_of=_settings, option_renames=OPTION_RENAMES)


def run(args: argparse.Namespace) -> int:
    from openslip import distributed
    from openslip.commands._common import finish, setup
    from openslip.data.augment.classify import FinetuneTransform
    from openslip.eval.finetune import FinetuneConfig, config_from_preset, finetune, preset_for
    from openslip.eval.sets import SetRequest, classification_opener, open_train_test
    from openslip.overrides import apply_overrides

    if args.out_dir:  # it holds finetune_state.pt only, beside anything else, but never in a run or checkpoint
        from openslip.outputs import check_output_dir

        check_output_dir(args.out_dir, option="--out-dir", own=None, sources=[args.model, args.dataset, args.train])
    # a mistake in the settings fails before the model loads (on the preset given, else the paper's default)
    apply_overrides(config_from_preset(args.preset) if args.preset else FinetuneConfig(), args.overrides)
    model, device = setup(args)  # checks --save and --output
    cfg = apply_overrides(config_from_preset(args.preset or preset_for(model.cfg.vision)), args.overrides)
    request = SetRequest(**{k: getattr(args, k) for k in ("dataset", "train", "split", "num_samples", "num_train")})
    # the sets as the probes open them; the seed is the settings' (the demo world's images too)
    opener = classification_opener(
        "finetune", image_size=args.image_size, seed=cfg.seed, crop_fraction=args.crop_fraction, inputs=args.inputs
    )
    train, test = open_train_test(request, opener)
    train.with_transform(FinetuneTransform.from_config(args.image_size, cfg))
    metrics, classifier = finetune(
        model,
        train,
        test,
        num_classes=test.num_classes,
        metric=test.metric,
        config=cfg,
        device=device,
        num_workers=args.num_workers,
        eval_every=args.eval_every,
        out_dir=args.out_dir,
        resume=args.resume,
        report=args.report,
    )
    if args.save and distributed.is_main():
        from pathlib import Path

        from safetensors.torch import save_file

        out = Path(args.save).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
        meta = {"model": model.cfg.name, "num_classes": str(test.num_classes), "classnames": "\n".join(test.classnames)}
        save_file(tensors, str(out), meta)
    title = f"finetune {test.name} ({cfg.epochs} epochs, batch {cfg.batch_size}): {len(train)} train, {len(test)} test"
    return finish(args, title, metrics)
