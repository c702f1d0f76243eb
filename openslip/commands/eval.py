"""`openslip eval {zeroshot,retrieval,linear,knn} --model MODEL --dataset DATASET [--output FILE.json]`.

MODEL is a run directory, checkpoint, `.safetensors` file or original SLIP `.pt`, or a model name with
`--pretrained none` (random weights) / `--pretrained FILE`. Every evaluation runs data-parallel under
`torchrun` (each rank encodes its shard; nothing is counted twice) and rank 0 prints a table and writes
the JSON, whose keys are metric names plus `metric` (the dataset's reported one) and `score` (its value).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from openslip.commands._common import (
    add_model_args,
    add_report_arg,
    classification_set,
    finish,
    setup,
    train_test,
)
from openslip.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    from openslip.eval.catalog import DEFAULT_PROMPTS, PROMPT_SETS

    p = sub.add_parser(
        "eval",
        help="evaluate a model: zero-shot classification, retrieval, linear probe, kNN",
        description="Evaluate a model. Examples: `openslip eval zeroshot --model runs/demo --dataset demo_shapes`; "
        "`openslip eval zeroshot --model slip_base_25ep.pt --dataset /data/food101/test --catalog food101`; "
        "`openslip eval retrieval --model runs/demo --dataset demo`; "
        "`openslip eval linear --model runs/demo --dataset demo_shapes`; `openslip eval knn ...`. "
        "Multi-process: `torchrun --nproc-per-node N -m openslip.cli eval ...`.",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    z = tasks.add_parser("zeroshot", help="zero-shot classification (class names x prompt templates)")
    _common(z)
    z.add_argument("--catalog", metavar="NAME", help="catalog dataset for class names, templates, metric (--list)")
    z.add_argument(
        "--classnames",
        metavar="FILE",
        help='class names: one per line, a JSON list, or a JSON {"classnames": [...], "templates": [...]} '
        "(which gives the templates too)",
    )
    z.add_argument(
        "--templates",
        metavar="FILE",
        help="prompt templates with one {} each: one per line, a JSON list, or the JSON object of --classnames",
    )
    z.add_argument(
        "--prompts",
        choices=PROMPT_SETS,
        default=DEFAULT_PROMPTS,
        help="the catalog's class names and templates: the 2021 reference's (default; the paper's protocol) or "
        "clip-benchmark's",
    )
    z.add_argument("--metric", choices=_metric_names(), help="reported metric (default: the catalog's, else top1)")
    z.add_argument("--save-predictions", metavar="FILE.csv", help="write per-image labels, predictions, top-5")
    z.add_argument("--confusion-matrix", metavar="FILE.png", help="write the confusion matrix as an image")
    z.add_argument(
        "--list",
        action="store_true",
        help="list the catalog datasets and the demo tasks, then exit; with --catalog NAME: that entry's layout, "
        "split and notes",
    )
    z.set_defaults(func=run_zeroshot)

    r = tasks.add_parser("retrieval", help="image<->text retrieval Recall@1/5/10")
    _common(r)
    r.add_argument("--image-root", metavar="DIR", help="folder image paths are relative to (Karpathy JSON, COCO)")
    r.add_argument("--caption-keys", metavar="COLS", help="manifest caption columns, comma-separated (e.g. c1,c2,c3)")
    r.set_defaults(func=run_retrieval)

    lin = tasks.add_parser("linear", help="linear probe: logistic regression on features, or the reference SGD")
    _common(lin)
    _train_args(lin)
    lin.add_argument("--protocol", choices=("logistic", "sgd"), default="logistic", help="probe protocol")
    lin.add_argument("--val", metavar="DATASET", help="validation set choosing C (default: 20%% of the train set)")
    lin.add_argument("--epochs", type=int, default=90, help="sgd: epochs (reference: 90)")
    lin.add_argument("--lr", type=float, default=0.1, help="sgd: base lr per 256 images (reference: 0.1)")
    lin.add_argument(
        "--train-batch-size", type=int, default=1024, help="sgd: global batch (reference: 128 per GPU x 8 = 1024)"
    )
    lin.add_argument(
        "--eval-every", type=int, default=10, help="sgd: score the test set every N epochs (reference: 10)"
    )
    add_report_arg(lin, "sgd: ")
    lin.add_argument(
        "--reference-lr-bug",
        nargs="?",
        type=_positive_int,
        const=0,
        metavar="N",
        help="sgd: divide the lr by the world size twice, as the 2021 reference did, for a reference run on N "
        "processes whatever this run's (the paper's: 8, i.e. lr 0.1 x int(1024 / 8 / 8) / 256 = 0.00625); without N, "
        "this run's process count",
    )
    lin.set_defaults(func=run_linear)

    k = tasks.add_parser("knn", help="weighted kNN on frozen features (k=20, T=0.07)")
    _common(k)
    _train_args(k)
    k.add_argument("--k", type=int, default=20, help="neighbours")
    k.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(sim / T)")
    k.set_defaults(func=run_knn)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _metric_names() -> tuple[str, ...]:
    from openslip.eval.metrics import CLASSIFICATION_METRICS

    return CLASSIFICATION_METRICS


def _common(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--dataset", help="demo task name, demo, image folder, CSV, manifest, Karpathy JSON")
    p.add_argument("--split", default="test", help="demo split / Karpathy split (default: test)")
    p.add_argument("-n", "--num-samples", type=int, help="demo: number of images (default per split)")
    p.add_argument("--output", metavar="FILE.json", help="write the metrics as JSON")
    p.add_argument("--cache-dir", metavar="DIR", help="cache features here (keyed by model weights and dataset)")
    p.add_argument("--seed", type=int, default=0, help="demo world seed; probe seeds")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", metavar="DATASET", help="train set (default for demo tasks: the task's train split)")
    p.add_argument("--num-train", type=int, help="demo: number of train images (default 4096)")
    p.add_argument(
        "--features",
        choices=("backbone", "embed"),
        default="backbone",
        help="backbone: the ViT's CLS feature (default); embed: the CLIP image embedding",
    )


# --- shared plumbing ------------------------------------------------------------------------------------


# --- zeroshot -------------------------------------------------------------------------------------------


def run_zeroshot(args: argparse.Namespace) -> int:
    if args.list:
        return _show_entry(args.catalog, args.prompts) if args.catalog else _list_datasets(args.prompts)
    if not args.dataset:
        raise ConfigError("--dataset is required (a demo task name, an image folder or a CSV; --list shows them)")
    from openslip.eval.zero_shot import evaluate_zero_shot

    model, device = setup(args)
    ds = classification_set(
        args,
        args.dataset,
        args.split,
        args.num_samples,
        catalog=args.catalog,
        classnames=args.classnames,
        templates=args.templates,
        metric=args.metric,
        prompts=args.prompts,
    )
    metrics, logits, labels = evaluate_zero_shot(
        model, ds, batch_size=args.batch_size, num_workers=args.num_workers, device=device, cache_dir=args.cache_dir
    )
    from openslip import distributed

    if distributed.is_main():
        if args.save_predictions:
            from openslip.eval.reports import save_predictions

            save_predictions(args.save_predictions, ds, logits, labels)
        if args.confusion_matrix:
            from openslip.eval.metrics import confusion_matrix
            from openslip.plot import plot_confusion

            matrix = confusion_matrix(logits, labels, ds.num_classes)
            plot_confusion(args.confusion_matrix, matrix.numpy(), ds.classnames, f"zero-shot {ds.name}")
    title = f"zero-shot {ds.name}: {len(ds)} images, {ds.num_classes} classes, {len(ds.templates)} templates"
    return finish(args, title, metrics)


def _list_datasets(prompts: str) -> int:
    from openslip.data.demo.tasks import demo_task_names
    from openslip.eval.catalog import catalog_names, get_entry

    print("demo tasks (no files needed): " + ", ".join(demo_task_names()))
    print(f"catalog (--catalog NAME with an image folder, CSV or shards; prompts: {prompts}):")
    for name in catalog_names():
        e = get_entry(name)
        if prompts != e.prompts:
            try:
                e = get_entry(name, prompts)
            except ConfigError:
                print(f"  {name:16s} {e.title:32s} (no {prompts} prompts)")
                continue
        names = f"{e.num_classes} classes" + ("" if e.classnames else " (names from folders / --classnames)")
        split = e.split + ("*" if e.split_source else "")
        print(f"  {name:16s} {e.title:32s} {e.metric:15s} {split:6s} {names}, {len(e.templates)} templates")
    print(
        "the split is the one the paper reports; *: the reference scored its val folder, not the release's test "
        "split (--list --catalog NAME says why)"
    )
    return 0


def _show_entry(name: str, prompts: str) -> int:
    from openslip.eval.catalog import get_entry

    e = get_entry(name, prompts)
    print(f"{e.name}: {e.title}, {e.num_classes} classes, {len(e.templates)} templates ({prompts} prompts)")
    print(f"  metric: {e.metric}")
    print(f"  split: {e.split}" + (f" ({e.split_source})" if e.split_source else ""))
    print(f"  layout: {e.layout}")
    if e.notes:
        print(f"  notes: {e.notes}")
    if e.classnames is not None:
        order = e.index_classes or range(e.num_classes)
        print("  class indices: " + ", ".join(f"{k} {e.classnames[c]}" for k, c in enumerate(order)))
    return 0


# --- retrieval ------------------------------------------------------------------------------------------


def run_retrieval(args: argparse.Namespace) -> int:
    from openslip.eval.datasets import open_retrieval
    from openslip.eval.retrieval import evaluate_retrieval

    if not args.dataset:
        raise ConfigError("--dataset is required: demo, a caption manifest, COCO captions or a Karpathy JSON")
    model, device = setup(args)
    data = open_retrieval(
        args.dataset,
        split=args.split,
        image_size=args.image_size,
        n=args.num_samples,
        image_root=args.image_root,
        caption_keys=args.caption_keys,
        seed=args.seed,
        crop_fraction=args.crop_fraction,
        inputs=args.inputs,
    )
    metrics = evaluate_retrieval(
        model, data, batch_size=args.batch_size, num_workers=args.num_workers, device=device, cache_dir=args.cache_dir
    )
    title = f"retrieval {data.name}: {int(metrics['num_images'])} images, {int(metrics['num_texts'])} captions"
    return finish(args, title, metrics)


# --- linear / knn ---------------------------------------------------------------------------------------


def _feature_options(args: argparse.Namespace, device: Any) -> Any:
    from openslip.eval.probes import FeatureOptions

    return FeatureOptions(args.features, args.batch_size, args.num_workers, device, args.cache_dir)


def run_linear(args: argparse.Namespace) -> int:

    model, device = setup(args)
    train, test = train_test(args)
    if args.protocol == "sgd":
        from openslip.data.augment.classify import ProbeTransform
        from openslip.eval.linear import SGDProbeConfig, sgd_probe

        if args.features != "backbone":
            raise ConfigError("--protocol sgd trains on the backbone features (drop --features embed)")
        cfg = SGDProbeConfig(
            epochs=args.epochs,
            batch_size=args.train_batch_size,
            base_lr=args.lr,
            reference_lr_bug=args.reference_lr_bug is not None,
            reference_world_size=args.reference_lr_bug or None,
            seed=args.seed,
            eval_every=args.eval_every,
            report=args.report,
        )
        train.with_transform(ProbeTransform(args.image_size, cfg.crop_scale))
        metrics = sgd_probe(
            model,
            train,
            test,
            num_classes=test.num_classes,
            metric=test.metric,
            config=cfg,
            device=device,
            num_workers=args.num_workers,
        )
        title = (
            f"linear probe (sgd, {cfg.epochs} epochs, lr {metrics['lr']:.4g}) {test.name}: {len(train)} train, "
            f"{len(test)} test images"
        )
        return finish(args, title, metrics)
    from openslip.eval.probes import linear_probe

    val = classification_set(args, args.val, "val", None) if args.val else None
    metrics, _, _ = linear_probe(model, train, test, _feature_options(args, device), val=val, seed=args.seed)
    title = f"linear probe (logistic, {args.features} features) {test.name}: {len(train)} train, {len(test)} test"
    return finish(args, title, metrics)


def run_knn(args: argparse.Namespace) -> int:
    from openslip.eval.probes import knn

    model, device = setup(args)
    train, test = train_test(args)
    opt = _feature_options(args, device)
    k = args.k
    if k > len(train):  # every train image votes: say so rather than report a k that never was
        print(
            f"openslip eval: note: --k {k} is more than the {len(train)} train images: using k={len(train)}",
            file=sys.stderr,
            flush=True,
        )
        k = len(train)
    metrics, _, _ = knn(model, train, test, opt, k=k, temperature=args.temperature)
    title = f"kNN (k={k}, T={args.temperature}, {args.features} features) {test.name}: {len(train)} train"
    return finish(args, title, metrics)
