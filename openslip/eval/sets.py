"""What `openslip eval TASK` hands to ``EVALS[TASK].run(model, eval_set, options)``: the set, opened from
``--dataset`` / ``--train`` / ``--val`` as each task reads them, and the typed `EvalOptions`, built from the
command's common flags (``--batch-size``, ``--seed`` ...) and its ``key=value`` overrides (each key once, and
only the keys the task reads: a setting nothing reads would be a silent no-op).

`openslip finetune` opens its train and test sets here too (`classification_opener`, `open_train_test`), as the
probes do. A labelled test set is opened as the command names it: a demo task renders ``-n`` images, a file set is
read whole (`openslip compare`'s ``open_eval_set`` subsamples file sets instead, the same for every model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openslip.data.demo.tasks import demo_task_names
from openslip.errors import ConfigError
from openslip.eval.catalog import DEFAULT_PROMPTS
from openslip.eval.datasets import ImageSet, open_classification, open_retrieval
from openslip.eval.suite import EvalOptions, EvalResult, EvalSet
from openslip.overrides import apply_overrides, parse_overrides

# The EvalOptions fields each task reads (key=value; `finetune_*` are `openslip finetune`'s and compare's).
COMMON_KEYS = ("device", "batch_size", "num_workers", "cache_dir", "seed", "crop_fraction", "image_size")
TASK_KEYS: dict[str, tuple[str, ...]] = {
    "zeroshot": COMMON_KEYS,
    "retrieval": COMMON_KEYS,
    "linear": (
        *COMMON_KEYS,
        "features",
        "linear_protocol",
        "linear_epochs",
        "linear_lr",
        "linear_batch_size",
        "linear_eval_every",
        "linear_report",
        "linear_reference_lr_bug",
    ),
    "knn": (*COMMON_KEYS, "features", "knn_k", "knn_temperature"),
    "fewshot": (*COMMON_KEYS, "features", "fewshot_shots", "fewshot_seeds", "fewshot_l2"),
    "suite": COMMON_KEYS,  # zero-shot on every catalog set under a folder (`openslip.eval.catalog_tree`)
}
_DATASET_REQUIRED = {
    "zeroshot": "--dataset is required (a demo task name, an image folder or a CSV; --list shows them)",
    "retrieval": "--dataset is required: demo, a caption manifest, COCO captions or a Karpathy JSON",
    "linear": "--dataset is required (a demo task name, or a test image folder / CSV with --train)",
    "knn": "--dataset is required (a demo task name, or a test image folder / CSV with --train)",
    "fewshot": "--dataset is required (a demo task name, or a test image folder / CSV with --train)",
}


@dataclass(kw_only=True)
class SetRequest:
    """The set options of `openslip eval TASK` (see its --help)."""

    dataset: str | None = None  # demo task, demo, image folder, CSV, manifest, Karpathy JSON
    split: str = "test"  # demo split / Karpathy split
    num_samples: int | None = None  # demo: images of the test split
    train: str | None = None  # probes: the train set (a demo task's own train split by default)
    num_train: int | None = None  # probes, demo: images of the train split
    val: str | None = None  # logistic probe: the set C is chosen on
    catalog: str | None = None  # zero-shot: catalog entry giving class names, templates, metric
    classnames: str | None = None  # zero-shot: class names file
    templates: str | None = None  # zero-shot: templates file
    metric: str | None = None  # zero-shot: reported metric
    prompts: str = DEFAULT_PROMPTS  # zero-shot: the catalog's prompt set
    image_root: str | None = None  # retrieval: folder image paths are relative to
    caption_keys: str | None = None  # retrieval: manifest caption columns


# The options the commands had before these settings became keys only, whose names differ from the keys: `openslip
# eval knn --k 10` is refused with "write `knn_k=10`". A renamed key the task does not read is no hint (`eval knn
# --epochs 3` gets argparse's own message): the per-task keys hold here too.
OPTION_RENAMES = {
    "k": "knn_k",
    "temperature": "knn_temperature",
    "protocol": "linear_protocol",
    "epochs": "linear_epochs",
    "lr": "linear_lr",
    "train_batch_size": "linear_batch_size",
    "eval_every": "linear_eval_every",
    "report": "linear_report",
    "reference_lr_bug": "linear_reference_lr_bug",
}
# What such an option meant when given without a value: `--reference-lr-bug` alone was this run's process count.
OPTION_BARE_VALUES = {"linear_reference_lr_bug": "0"}


def option_key(task: str, option: str) -> str | None:
    """The key an unknown option such as `--knn-k` or `--k` means for `task`, when it is one."""
    name = option.lstrip("-").partition("=")[0].replace("-", "_")
    name = OPTION_RENAMES.get(name, name)
    return name if name in TASK_KEYS[task] else None


def task_options(task: str, flags: dict[str, tuple[str, Any]], overrides: list[str]) -> EvalOptions:
    """`EvalOptions` with the given flags (key -> (how it was written, value)) and then `key=value` overrides;
    a key given both ways, or one `task` does not read, is a one-line ConfigError."""
    parse_overrides(overrides)  # the form of each item, and each key once
    keys = TASK_KEYS[task]
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in keys:
            raise ConfigError(f"unknown key '{key}' for eval {task}; valid keys: {', '.join(keys)}")
        if key in flags:
            raise ConfigError(f"{key} is given twice ({flags[key][0]}, {item!r}): give each key once")
    return apply_overrides(EvalOptions(**{k: v for k, (_, v) in flags.items()}), overrides)


def require_dataset(task: str, dataset: str | None) -> None:
    if not dataset:
        raise ConfigError(_DATASET_REQUIRED[task])


def classification_opener(
    protocol: str, *, image_size: int | None, seed: int, crop_fraction: float | None, inputs: Any
) -> Callable[..., ImageSet]:
    """``opener(spec, split, n, **extra)``: `open_classification` with what every labelled set of one command shares,
    its images sized and cropped as `protocol` (an eval task, or ``finetune``) does (``inputs``: the model's recorded
    mean, std and resize)."""

    def opener(spec: str, split: str, n: int | None, **extra: Any) -> ImageSet:
        return open_classification(
            spec,
            split=split,
            image_size=image_size,
            n=n,
            seed=seed,
            protocol=protocol,
            crop_fraction=crop_fraction,
            inputs=inputs,
            **extra,
        )

    return opener


def open_train_test(req: SetRequest, opener: Callable[..., ImageSet]) -> tuple[ImageSet, ImageSet]:
    """(train, test) of a probe or of `openslip finetune`: ``--dataset`` scores, ``--train`` trains (a demo task's
    own train split by default), and both must have the same classes in the same order (the labels are indices)."""
    if req.dataset in demo_task_names():
        train_spec = req.train or req.dataset
    elif req.train:
        train_spec = req.train
    else:
        raise ConfigError(f"--train is required with a folder or CSV test set ({req.dataset})")
    test = opener(req.dataset, req.split, req.num_samples)
    train = opener(train_spec, "train", req.num_train)
    if train.classnames != test.classnames:
        diff = next((f"{a!r} vs {b!r}" for a, b in zip(train.classnames, test.classnames, strict=False) if a != b), "")
        raise ConfigError(
            f"train and test sets have different classes ({train.num_classes} vs {test.num_classes}"
            f"{'; first difference: ' + diff if diff else ''})"
        )
    return train, test


def open_task_set(task: str, req: SetRequest, opt: EvalOptions, *, inputs: Any) -> EvalSet:
    """The set `task` reads, its images sized (``opt.image_size``, resolved) and cropped as the task's protocol
    does (``inputs``: the model's recorded mean, std and resize)."""
    require_dataset(task, req.dataset)
    if task == "retrieval":
        data = open_retrieval(
            req.dataset,
            split=req.split,
            image_size=opt.image_size,
            n=req.num_samples,
            image_root=req.image_root,
            caption_keys=req.caption_keys,
            seed=opt.seed,
            crop_fraction=opt.crop_fraction,
            inputs=inputs,
        )
        return EvalSet(spec=req.dataset, name=data.name, kind="retrieval", test=data)
    opener = classification_opener(
        task, image_size=opt.image_size, seed=opt.seed, crop_fraction=opt.crop_fraction, inputs=inputs
    )
    if task == "zeroshot":
        prompts = {k: getattr(req, k) for k in ("catalog", "classnames", "templates", "metric", "prompts")}
        test = opener(req.dataset, req.split, req.num_samples, **prompts)
        return EvalSet(spec=req.dataset, name=test.name, kind="classification", test=test)
    train, test = open_train_test(req, opener)
    logistic = task == "linear" and opt.linear_protocol == "logistic"
    val = opener(req.val, "val", None) if logistic and req.val else None
    return EvalSet(spec=req.dataset, name=test.name, kind="classification", test=test, train=train, val=val)


def command_metrics(task: str, result: EvalResult) -> dict[str, Any]:
    """The metrics `openslip eval TASK` prints and writes. Retrieval's have always been the recalls and the set
    sizes (the suite adds ``metric`` / ``score`` = mean recall for `openslip compare`'s one column per set)."""
    if task == "retrieval":
        return {k: v for k, v in result.metrics.items() if k not in ("metric", "score")}
    return result.metrics
