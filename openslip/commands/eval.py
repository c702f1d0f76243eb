"""`openslip eval {zeroshot,retrieval,linear,knn} --model MODEL --dataset DATASET [key=value ...]`.

MODEL is a run directory, checkpoint, `.safetensors` file or original SLIP `.pt`, or a model name with
`--pretrained none` (random weights) / `--pretrained FILE`. The settings of the evaluation are the fields of
`openslip.eval.suite.EvalOptions`, given as `key=value` (`knn_k=10`, `linear_protocol=sgd`); the few that every
command shares keep their options too (`--batch-size 64` or `batch_size=64`). The options the probes once had for
their own settings (`--k 10`, `--protocol sgd`, `--lr`, ...) are refused in one line that names the key. Each task
runs through the same door as `openslip compare`: ``EVALS[task].run(model, eval_set, options)``.
Every evaluation runs data-parallel under `torchrun` (each rank encodes its shard; nothing is counted twice)
and rank 0 prints a table and writes the JSON, whose keys are metric names plus, for classification,
`metric` (the dataset's reported one) and `score` (its value). Argument parsing and printing only: the sets
and options are built in `openslip.eval.sets`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from functools import partial
from typing import Any

from openslip.commands._common import EVAL_FLAGS, add_model_args, finish, setup
from openslip.errors import ConfigError
from openslip.eval.sets import OPTION_BARE_VALUES, TASK_KEYS, option_key


def register(sub: argparse._SubParsersAction) -> None:
    from openslip.eval.catalog import DEFAULT_PROMPTS, PROMPT_SETS

    p = sub.add_parser(
        "eval",
        help="evaluate a model: zero-shot classification, retrieval, linear probe, kNN",
        description="Evaluate a model. Examples: `openslip eval zeroshot --model runs/demo --dataset demo_shapes`; "
        "`openslip eval zeroshot --model slip_base_25ep.pt --dataset /data/food101/test --catalog food101`; "
        "`openslip eval retrieval --model runs/demo --dataset demo`; "
        "`openslip eval linear --model runs/demo --dataset demo_shapes`; "
        "`openslip eval knn --model runs/demo --dataset demo_shapes knn_k=10`; "
        "`openslip eval linear --model M --dataset TEST --train TRAIN linear_protocol=sgd linear_epochs=90`. "
        "Settings are key=value overrides of the evaluation's options (each key once; a bad key lists the valid "
        "ones); --device, --batch-size, --num-workers, --cache-dir, --seed, --image-size, --crop-fraction and "
        "--features write the same fields. "
        "Multi-process: `torchrun --nproc-per-node N -m openslip.cli eval ...`.",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    z = tasks.add_parser("zeroshot", help="zero-shot classification (class names x prompt templates)")
    _common(z, "zeroshot")
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

    r = tasks.add_parser("retrieval", help="image<->text retrieval Recall@1/5/10")
    _common(r, "retrieval")
    r.add_argument("--image-root", metavar="DIR", help="folder image paths are relative to (Karpathy JSON, COCO)")
    r.add_argument("--caption-keys", metavar="COLS", help="manifest caption columns, comma-separated (e.g. c1,c2,c3)")

    lin = tasks.add_parser(
        "linear",
        help="linear probe: logistic regression on features, or the reference SGD",
        description=_keys_text(
            "Linear probe: CLIP's logistic regression on frozen features, or the SLIP reference's SGD probe.",
            {
                "linear_protocol": "logistic or sgd",
                "linear_epochs": "sgd: epochs (reference: 90)",
                "linear_lr": "sgd: base lr per 256 images (reference: 0.1)",
                "linear_batch_size": "sgd: global batch (reference: 128 per GPU x 8 = 1024)",
                "linear_eval_every": "sgd: score the test set every N epochs (reference: 10)",
                "linear_report": "sgd: the score reported, best of the evaluations (reference) or final; the result "
                "gives both",
                "linear_reference_lr_bug": "sgd: divide the lr by the world size twice, as the 2021 reference did, "
                "for a reference run on N processes whatever this run's (the paper's: 8, i.e. lr 0.1 x int(1024 / 8 "
                "/ 8) / 256 = 0.00625); 0: this run's process count",
            },
        ),
    )
    _common(lin, "linear")
    _train_args(lin)
    lin.add_argument("--val", metavar="DATASET", help="validation set choosing C (default: 20%% of the train set)")

    k = tasks.add_parser(
        "knn",
        help="weighted kNN on frozen features (k=20, T=0.07)",
        description=_keys_text(
            "Weighted kNN on frozen features (DINO's protocol).",
            {"knn_k": "neighbours", "knn_temperature": "vote weight exp(sim / T)"},
        ),
    )
    _common(k, "knn")
    _train_args(k)

    f = tasks.add_parser(
        "fewshot",
        help="few-shot linear evaluation: closed-form ridge on k train images per class, averaged over seeds",
        description=_keys_text(
            "Few-shot linear evaluation (big_vision's kind): a closed-form ridge regression on L2-normalised frozen "
            "features and one-hot targets, fitted on k train images per class, for each k of --shots, averaged "
            "over --seeds draws (mean and spread). The reported score is the largest k's mean.",
            {
                "fewshot_shots": "images per class (--shots 1,5,10,25)",
                "fewshot_seeds": "draws averaged (--seeds N)",
                "fewshot_l2": "ridge penalty on unit-norm features",
            },
        ),
    )
    _common(f, "fewshot")
    _train_args(f)
    f.add_argument(
        "--shots",
        dest="fewshot_shots",
        metavar="K,K,...",
        help=_default("images per class, comma-separated", "fewshot_shots"),
    )
    f.add_argument("--seeds", dest="fewshot_seeds", metavar="N", help=_default("draws averaged", "fewshot_seeds"))

    from openslip.commands.eval_suite import add_suite_parser

    add_suite_parser(tasks, _settings, option_key, OPTION_BARE_VALUES)


def _settings() -> type:
    """The dataclass the overrides set (imported when needed: `openslip --help` does not load torch)."""
    from openslip.eval.suite import EvalOptions

    return EvalOptions


def _metric_names() -> tuple[str, ...]:
    from openslip.eval.metrics import CLASSIFICATION_METRICS

    return CLASSIFICATION_METRICS


def _default(text: str, key: str) -> str:
    """Help text with the default of the EvalOptions field the option writes (stated in one place)."""
    from openslip.eval.suite import EvalOptions

    return f"{text} (default {getattr(EvalOptions(), key)}; key={key})"


def _keys_text(intro: str, keys: dict[str, str]) -> str:
    """A task's description: what it does, then its own key=value settings with their defaults (stated once, in
    EvalOptions)."""
    from openslip.eval.suite import EvalOptions

    defaults = EvalOptions()
    shown = [
        f"{key}={value}: {text}" if (value := getattr(defaults, key)) is not None else f"{key} (default off): {text}"
        for key, text in keys.items()
    ]
    return f"{intro} Its own settings, as key=value with their defaults: " + "; ".join(shown) + "."


def _common(p: argparse.ArgumentParser, task: str) -> None:
    add_model_args(p)
    # --batch-size / --num-workers write EvalOptions fields: None here means "not given" (the field's default)
    p.set_defaults(
        batch_size=None,
        num_workers=None,
        func=run,
        command_name=f"eval {task}",  # its errors, as argparse's own: `openslip eval knn: error: ...`
        overrides_of=_settings,
        option_key=partial(option_key, task),
        option_bare_values=OPTION_BARE_VALUES,
    )
    p.add_argument("--dataset", help="demo task name, demo, image folder, CSV, manifest, Karpathy JSON")
    p.add_argument("--split", default="test", help="demo split / Karpathy split (default: test)")
    p.add_argument("-n", "--num-samples", type=int, help="demo: number of images (default per split)")
    p.add_argument("--output", metavar="FILE.json", help="write the metrics as JSON")
    p.add_argument("--cache-dir", metavar="DIR", help="cache features here (keyed by model weights and dataset)")
    p.add_argument("--seed", type=int, help=_default("demo world seed; probe seeds", "seed"))
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=f"evaluation options, e.g. batch_size=64 (keys: {', '.join(TASK_KEYS[task])})",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", metavar="DATASET", help="train set (default for demo tasks: the task's train split)")
    p.add_argument("--num-train", type=int, help="demo: number of train images (default 4096)")
    p.add_argument(
        "--features",
        choices=("backbone", "embed"),
        help=_default("backbone: the ViT's CLS feature; embed: the CLIP image embedding", "features"),
    )


FLAGS = EVAL_FLAGS
SET_FIELDS = ("dataset", "split", "num_samples", "train", "num_train", "val", "catalog", "classnames", "templates",
              "metric", "prompts", "image_root", "caption_keys")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Options and set from the command line, then ``EVALS[task].run``; rank 0 prints the table."""
    from openslip.eval.sets import SetRequest, command_metrics, open_task_set, require_dataset, task_options
    from openslip.eval.suite import EVALS

    task = args.task
    if task == "zeroshot" and args.list:
        return _show_entry(args.catalog, args.prompts) if args.catalog else _list_datasets(args.prompts)
    if task == "fewshot":
        _fewshot_flags(args)
    given = {key: getattr(args, key) for key in TASK_KEYS[task] if getattr(args, key, None) is not None}
    options = task_options(task, {k: (f"{FLAGS[k]} {v}", v) for k, v in given.items()}, args.overrides)
    if task in ("zeroshot", "retrieval"):
        require_dataset(task, args.dataset)
    device_given = "device" in given or any(o.partition("=")[0].strip() == "device" for o in args.overrides)
    for key in ("batch_size", "num_workers", "crop_fraction", "image_size"):  # what `setup` checks and resolves
        setattr(args, key, getattr(options, key))
    args.device = str(options.device) if device_given else None
    model, device = setup(args)
    options = replace(options, device=device, image_size=args.image_size)
    request = SetRequest(**{k: getattr(args, k) for k in SET_FIELDS if hasattr(args, k)})
    es = open_task_set(task, request, options, inputs=args.inputs)
    if task == "knn" and options.knn_k > len(es.train):  # every train image votes: say so
        print(
            f"openslip eval knn: note: knn_k={options.knn_k} is more than the {len(es.train)} train images: "
            f"using k={len(es.train)}",
            file=sys.stderr,
            flush=True,
        )
    result = EVALS.get(task).run(model, es, options)
    if task == "zeroshot":
        _zeroshot_reports(args, es, result)
    if task == "fewshot":
        table = _fewshot_table(es, options, result)
        return finish(args, table.splitlines()[0], command_metrics(task, result), table=table)
    return finish(args, _title(task, es, options, result), command_metrics(task, result))


def _fewshot_flags(args: argparse.Namespace) -> None:
    """--shots K,K,... and --seeds N as the EvalOptions values (one-line errors for anything else)."""
    from openslip.eval.fewshot import parse_shots

    if args.fewshot_shots is not None:
        args.fewshot_shots = parse_shots(args.fewshot_shots)
    if args.fewshot_seeds is not None:
        text = str(args.fewshot_seeds).strip()
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"--seeds should be a positive integer (draws averaged), got {args.fewshot_seeds!r}")
        args.fewshot_seeds = int(text)


def _fewshot_table(es: Any, opt: Any, result: Any) -> str:
    """One row per k: the mean over seeds of the set's metric, the standard deviation, the lowest and highest."""
    m, test = result.metrics, es.test
    seeds = int(m["seeds"])
    title = (
        f"few-shot ridge (l2 {m['l2']:g}, {opt.features} features, {seeds} seed(s)) {test.name}: {test.num_classes} "
        f"classes, {len(test)} test images, train pool {len(es.train)}"
    )
    header = f"{'shots':>5}  {m['metric'] + ' mean':>15}  {'std':>6}  {'min':>6}  {'max':>6}"
    lines = [title, header, "-" * len(header)]
    for k in sorted(int(key.removesuffix("shot")) for key in m if key.endswith("shot")):
        runs = m[f"{k}shot_seeds"]
        mark = "  <- reported" if k == int(m["shots"]) else ""
        lines.append(
            f"{k:>5}  {m[f'{k}shot']:>15.2f}  {m[f'{k}shot_std']:>6.2f}  {min(runs):>6.2f}  {max(runs):>6.2f}{mark}"
        )
    return "\n".join(lines)


def _zeroshot_reports(args: argparse.Namespace, es: Any, result: Any) -> None:
    from openslip import distributed

    if not distributed.is_main():
        return
    import torch

    ds, labels = es.test, torch.from_numpy(result.outcomes["labels"])
    if args.save_predictions:
        from openslip.eval.reports import save_predictions

        save_predictions(args.save_predictions, ds, result.scores, labels)
    if args.confusion_matrix:
        from openslip.eval.metrics import confusion_matrix
        from openslip.plot import plot_confusion

        matrix = confusion_matrix(result.scores, labels, ds.num_classes)
        plot_confusion(args.confusion_matrix, matrix.numpy(), ds.classnames, f"zero-shot {ds.name}")


def _title(task: str, es: Any, opt: Any, result: Any) -> str:
    m, test, train = result.metrics, es.test, es.train
    if task == "zeroshot":
        return f"zero-shot {test.name}: {len(test)} images, {test.num_classes} classes, {len(test.templates)} templates"
    if task == "retrieval":
        return f"retrieval {es.name}: {int(m['num_images'])} images, {int(m['num_texts'])} captions"
    if task == "knn":
        k = min(opt.knn_k, len(train))
        return f"kNN (k={k}, T={opt.knn_temperature}, {opt.features} features) {test.name}: {len(train)} train"
    if opt.linear_protocol == "sgd":
        return (
            f"linear probe (sgd, {opt.linear_epochs} epochs, lr {m['lr']:.4g}) {test.name}: {len(train)} train, "
            f"{len(test)} test images"
        )
    return f"linear probe (logistic, {opt.features} features) {test.name}: {len(train)} train, {len(test)} test"


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
