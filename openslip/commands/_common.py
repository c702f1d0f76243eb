"""What the evaluation commands share (`openslip eval`, `finetune`, `embed`): the model options, loading the model on
every rank, and printing / writing the result. Argument plumbing only: the sets are opened by `openslip.eval.sets`
and the evaluations themselves are library calls in `openslip.eval`."""

from __future__ import annotations

import argparse
from typing import Any

from openslip.errors import ConfigError


def add_model_args(p: argparse.ArgumentParser, *, forward_batch: bool = True) -> None:
    """The model and how it is run. ``forward_batch=False``: no --batch-size, for a command whose own settings size
    every pass (`openslip finetune`: its ``batch_size=`` is the training batch, and scoring uses its share)."""
    p.add_argument("--model", required=False, help="run dir, checkpoint, .safetensors, SLIP .pt, or a model name")
    p.add_argument(
        "--pretrained",
        metavar="none|FILE",
        help="with a model name: 'none' for random weights, or a weights file for that model",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: this rank's GPU, else cpu)")
    p.add_argument("--image-size", type=int, help="input size (default: the model's)")
    p.add_argument(
        "--crop-fraction",
        type=float,
        metavar="F",
        help="centre crop / resized shorter side: 1.0 resizes to the input size, 0.875 to size / 0.875 "
        "(default: the protocol's, as the reference: 1.0 for zero-shot, retrieval and embed; 0.875 for probes and "
        "finetuning)",
    )
    if forward_batch:
        p.add_argument("--batch-size", type=int, default=256, help="images per forward pass per process")
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes per rank")


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before anything loads, an output that would overwrite a run's or a checkpoint's file, or an input of
    the command (`openslip.outputs`): --output, --save, --confusion-matrix, --save-predictions, --cache-dir."""
    from openslip.outputs import check_output_dir, check_output_file

    inputs = [getattr(args, key, None) for key in ("model", "pretrained", "dataset", "train", "input")]
    for key in ("output", "save", "confusion_matrix", "save_predictions"):
        if getattr(args, key, None):
            check_output_file(getattr(args, key), option="--" + key.replace("_", "-"), sources=inputs)
    if getattr(args, "cache_dir", None):
        check_output_dir(args.cache_dir, option="--cache-dir", own=None, sources=inputs)


def setup(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, device) on every rank; the process group is joined from the torchrun environment."""
    from openslip import distributed
    from openslip.eval.features import load_eval_model
    from openslip.eval.preprocess import check_crop_fraction, model_inputs

    if not args.model:
        raise ConfigError("--model is required (a run dir, checkpoint, SLIP .pt, or a name with --pretrained none)")
    check_outputs(args)
    info = distributed.init_distributed()
    device = args.device or info.device
    model = load_eval_model(args.model, pretrained=args.pretrained, device=device)
    args.inputs = model_inputs(model)  # converted CLIP weights keep CLIP's image statistics and resize
    check_crop_fraction(args.crop_fraction)  # also where no file is resized (demo tasks): a typo is not ignored
    if args.image_size is None:
        args.image_size = model.cfg.vision.image_size
    patch = model.cfg.vision.patch_size
    if args.image_size < patch or args.image_size % patch:  # the ViT would silently drop the remainder
        raise ConfigError(
            f"--image-size {args.image_size} is not a multiple of {model.cfg.name}'s patch size {patch} "
            f"(try {max(patch, round(args.image_size / patch) * patch)})"
        )
    if getattr(args, "batch_size", 1) < 1 or args.num_workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --num-workers >= 0")
    return model, device


# EvalOptions fields an `openslip eval` option also writes: the option's value (None: not given) sits under the field's
# name (commands/eval.py; the suite takes those that apply to it).
EVAL_FLAGS = {
    "device": "--device",
    "batch_size": "--batch-size",
    "num_workers": "--num-workers",
    "cache_dir": "--cache-dir",
    "seed": "--seed",
    "crop_fraction": "--crop-fraction",
    "image_size": "--image-size",
    "features": "--features",
    "fewshot_shots": "--shots",
    "fewshot_seeds": "--seeds",
}


def finish(
    args: argparse.Namespace,
    title: str,
    metrics: dict[str, Any],
    *,
    keys: list[str] | None = None,
    table: str | None = None,
) -> int:
    """Rank 0: print the table (``table``: a command's own, already formatted) and write --output; everyone leaves
    the process group."""
    from openslip import distributed

    if distributed.is_main():
        print(table if table is not None else format_table(title, metrics, keys))
        if args.output:
            from openslip.weights.atomic import write_json

            write_json(args.output, metrics)
            print(f"wrote {args.output}")
    distributed.barrier()
    distributed.destroy_distributed()
    return 0


def format_table(title: str, metrics: dict[str, Any], keys: list[str] | None = None) -> str:
    rows = [(k, metrics[k]) for k in (keys or list(metrics)) if k in metrics and k != "metric"]
    width = max([len(k) for k, _ in rows] + [10])
    lines = [title, "-" * max(len(title), width + 12)]
    for k, v in rows:
        mark = "  <- reported" if k == metrics.get("metric") else ""
        if isinstance(v, float) and (
            k.startswith("num_") or k.endswith("_epoch") or k in ("k", "epochs", "batch_size", "num_classes")
        ):
            text = f"{int(v)}"
        elif isinstance(v, float) and k in ("C", "lr", "temperature"):
            text = f"{v:.4g}"
        elif isinstance(v, float):
            text = f"{v:.2f}"
        else:
            text = str(v)
        lines.append(f"{k:<{width}}  {text:>10}{mark}")
    return "\n".join(lines)
