"""Evaluations by name (docs/DESIGN.md, 'Evaluation'): ``EVALS[name].run(model, eval_set, options) -> EvalResult``.

Each evaluation returns the metrics of its `openslip eval` command (with ``metric`` and ``score``) and the
per-sample outcomes behind them (``openslip.eval.stats``), so a caller can put an interval on every score
and pair two models on the same images. ``Evaluation.why_not`` says when one does not apply (zero-shot
needs a text tower, a probe needs a train split); `openslip compare` shows those cells as "—".
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from openslip import distributed
from openslip.data.augment.classify import FinetuneTransform, ProbeTransform
from openslip.data.demo.tasks import demo_task_names
from openslip.data.formats.class_lists import check_templates
from openslip.errors import ConfigError, DataError
from openslip.eval.catalog import DEFAULT_PROMPTS, split_catalog_spec
from openslip.eval.datasets import ImageSet, RetrievalSet, open_classification, open_retrieval
from openslip.eval.features import extract_features
from openslip.eval.fewshot import (
    DEFAULT_L2,
    DEFAULT_SEEDS,
    DEFAULT_SHOTS,
    FewShotConfig,
    fewshot_probe,
    pool_rows,
    short_classes,
)
from openslip.eval.finetune import config_from_preset, finetune
from openslip.eval.linear import SGDProbeConfig, sgd_probe
from openslip.eval.metrics import CLASSIFICATION_METRICS, recall_from_ranks
from openslip.eval.probes import FeatureOptions, frozen_features, knn, linear_probe
from openslip.eval.retrieval import retrieval_ranks_of
from openslip.eval.stats import Outcomes, classification_outcomes, retrieval_outcomes, score
from openslip.eval.zero_shot import evaluate_zero_shot
from openslip.files import DOCUMENT_BYTES, read_text
from openslip.models.config import ModelConfig
from openslip.registry import Registry

RETRIEVAL_PREFIX = "retrieval:"
# `TEST@TRAIN#PROMPTS.json`: the set's own class names, templates and metric.
PROMPTS_MARK = "#"
PROMPT_FILE_KEYS = ("classnames", "templates", "metric")


@dataclass(kw_only=True)
class EvalOptions:
    device: torch.device | str = "cpu"  # where features are computed
    batch_size: int = 256  # images per forward pass
    num_workers: int = 0  # data loader workers
    cache_dir: str | None = None  # feature cache (keyed by weights and dataset)
    seed: int = 0  # probe / finetuning seed
    knn_k: int = 20  # kNN neighbours (DINO protocol)
    knn_temperature: float = 0.07  # kNN vote temperature
    finetune_preset: str = "demo"  # `openslip finetune --preset`
    finetune_epochs: int | None = None  # override the preset's epochs
    finetune_dir: str | None = None  # resumable finetuning state (one directory per model and set)
    crop_fraction: float | None = None  # image files: None, each protocol's own (``openslip.eval.preprocess``)
    # `openslip eval` (key=value there; --image-size and --features write the same fields):
    image_size: int | None = None  # input size the sets are opened at; None: the model's
    features: Literal["backbone", "embed"] = "backbone"  # probes: the ViT's CLS feature or the CLIP embedding
    linear_protocol: Literal["logistic", "sgd"] = "logistic"  # CLIP's logistic probe, or the reference's SGD one
    linear_epochs: int = 90  # sgd: epochs (reference: 90)
    linear_lr: float = 0.1  # sgd: base lr per 256 images (reference: 0.1)
    linear_batch_size: int = 1024  # sgd: global batch (reference: 128 per GPU x 8)
    linear_eval_every: int = 10  # sgd: score the test set every N epochs (reference's --eval-freq: 10)
    linear_report: Literal["best", "final"] = "best"  # sgd: the best evaluation's score (reference), or the last's
    # sgd: the reference's lr divided by the world size twice, as on a reference run of N processes (the paper's: 8);
    # 0: as on this run's process count (what the option `--reference-lr-bug` without N meant); None: the correct rate
    linear_reference_lr_bug: int | None = None
    # few-shot ridge probe (`openslip.eval.fewshot`; --shots / --seeds write the first two):
    fewshot_shots: tuple[int, ...] = DEFAULT_SHOTS  # images per class; the largest is the reported score
    fewshot_seeds: int = DEFAULT_SEEDS  # draws of the images, averaged (mean and spread reported)
    fewshot_l2: float = DEFAULT_L2  # ridge penalty on unit-norm features


@dataclass
class EvalSet:
    """A named evaluation set: a labelled test set (and its train split, for probes) or a retrieval set."""

    spec: str  # as the user wrote it
    name: str
    kind: str  # "classification" or "retrieval"
    test: ImageSet | RetrievalSet
    train: ImageSet | None = None
    prompts_from: str = ""  # where its class names and templates come from (a file, a catalog entry, ...)
    val: ImageSet | None = None  # the logistic probe chooses C on it (default: 20% of train held out)

    @property
    def metric(self) -> str:
        return self.test.metric if isinstance(self.test, ImageSet) else "mean_recall"

    def baselines(self) -> dict[str, float]:
        """Chance and majority-class scores (classification; the floor any model must clear)."""
        if not isinstance(self.test, ImageSet):
            return {}

        labels = self.test.labels
        reference = self.train.labels if self.train is not None else labels  # the majority of what a probe sees
        majority = int(np.bincount(reference).argmax())
        constant = {"labels": labels, "top5": np.full((len(labels), 1), majority), "margin": np.zeros(len(labels))}
        majority_score = score(constant, self.metric)  # a constant margin: ROC-AUC 50
        return {"chance": 100.0 / self.test.num_classes, "majority": majority_score}

    def prompts(self) -> dict[str, Any]:
        """The zero-shot prompts and the metric of the set, as results record them."""
        if not isinstance(self.test, ImageSet):
            return {"metric": self.metric}
        return {
            "metric": self.metric,
            "prompts_from": self.prompts_from,
            "classnames": list(self.test.classnames),
            "templates": list(self.test.templates),
        }


class SubsetImageSet(ImageSet):
    """Some images of a set (a seeded subsample, a validation split), in the order of ``indices``; ``tag`` names
    the choice in the set's identity, so cached features of the whole set are never taken for the part's."""

    def __init__(self, base: ImageSet, indices: np.ndarray, tag: str) -> None:
        super().__init__(
            name=base.name,
            labels=base.labels[indices],
            classnames=base.classnames,
            templates=base.templates,
            metric=base.metric,
            identity=f"{base._identity}:{tag}",
            transform=base.transform,
        )
        self.prompt_names = base.prompt_names
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)

    def load(self, i: int) -> Any:
        return self.base.load(int(self.indices[i]))


def subsample(ds: ImageSet, n: int | None, *, seed: int) -> ImageSet:
    """At most `n` images of `ds`, drawn without replacement by `seed` and kept in the set's order; the whole set
    when it holds no more than `n` (as a demo task's ``-n`` is the size asked for, a file set's is a cap)."""
    if n is None or n >= len(ds):
        return ds
    indices = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return SubsetImageSet(ds, indices, f"subsample:{n}:{seed}")


def validation_split(es: EvalSet, *, fraction: float = 0.2, seed: int = 0) -> EvalSet:
    """A held-out part of `es`'s train split (`fraction` of it, drawn by `seed`) as the test side of a new set
    whose train side is the rest: what a choice of settings may look at without seeing `es`'s test images."""
    if es.train is None:
        raise ConfigError(f"evaluation set {es.spec!r} has no train split to hold a validation part out of")
    n = len(es.train)
    n_val = max(1, round(fraction * n))
    if n - n_val < 2:
        raise ConfigError(f"evaluation set {es.spec!r}: its train split ({n} images) is too small to hold out a part")
    order = np.random.default_rng(seed).permutation(n)
    val, fit = np.sort(order[:n_val]), np.sort(order[n_val:])
    return EvalSet(
        spec=f"{es.spec} (validation)",
        name=f"{es.name} (validation)",
        kind="classification",
        test=SubsetImageSet(es.train, val, f"val:{fraction}:{seed}"),
        train=SubsetImageSet(es.train, fit, f"fit:{fraction}:{seed}"),
        prompts_from=es.prompts_from,
    )


def read_set_prompts(path: str) -> dict[str, Any]:
    """A compare set's ``#PROMPTS.json``: a JSON object with any of ``classnames`` (a list), ``templates`` (a
    list, one ``{}`` each) and ``metric`` (one of CLASSIFICATION_METRICS). The file of `openslip eval zeroshot
    --classnames/--templates` (both lists) is one."""
    p = Path(path).expanduser()
    try:
        doc = json.loads(read_text(p, limit=DOCUMENT_BYTES, error=DataError))  # a FIFO or a device: one line
    except OSError:
        raise DataError(f"no such prompts file: {p}") from None
    except ValueError as err:
        raise DataError(f"{p}: not valid JSON: {' '.join(str(err).split())}") from None
    if not isinstance(doc, dict) or not any(k in doc for k in PROMPT_FILE_KEYS):
        raise DataError(f'{p}: expected a JSON object with "classnames", "templates" and/or "metric"')
    out: dict[str, Any] = {}
    if "classnames" in doc:
        names = doc["classnames"]
        if not isinstance(names, list) or not names or not all(isinstance(x, str) and x.strip() for x in names):
            raise DataError(f'{p}: "classnames" must be a non-empty list of non-empty strings')
        out["classnames"] = [x.strip() for x in names]
    if "templates" in doc:
        temps = doc["templates"]
        if not isinstance(temps, list) or not all(isinstance(x, str) for x in temps):
            raise DataError(f'{p}: "templates" must be a list of strings with one {{}} each')
        try:
            out["templates"] = check_templates(temps)
        except ConfigError as err:
            raise DataError(f"{p}: {err}") from None
    if "metric" in doc:
        if doc["metric"] not in CLASSIFICATION_METRICS:
            raise DataError(f'{p}: "metric" must be one of {", ".join(CLASSIFICATION_METRICS)}, not {doc["metric"]!r}')
        out["metric"] = doc["metric"]
    return out


def split_prompts_spec(spec: str) -> tuple[str, str | None]:
    """``TEST@TRAIN#PROMPTS.json`` -> (``TEST@TRAIN``, ``PROMPTS.json``); a spec without a ``#….json`` tail -> (spec,
    None), so that a ``#`` elsewhere in a path stays part of it."""
    body, sep, tail = spec.rpartition(PROMPTS_MARK)
    if sep and body and tail.lower().endswith(".json"):
        return body, tail
    return spec, None


class MemoizedLoad:
    """``ImageSet.load`` that keeps decoded (or rendered) images in memory up to a byte budget, so a set that
    several models are evaluated on is read once. Beyond the budget, images are loaded as before."""

    def __init__(self, load: Callable[[int], Any], budget_bytes: int) -> None:
        self.load = load
        self.budget = budget_bytes
        self.images: dict[int, Any] = {}

    def __call__(self, i: int) -> Any:
        if i in self.images:
            return self.images[i].copy()  # a transform may write into what it is given
        image = self.load(i)
        size = image.nbytes if hasattr(image, "nbytes") else 3 * image.size[0] * image.size[1]
        if size <= self.budget:
            self.images[i] = image.copy()
            self.budget -= size
        return image


def open_eval_set(
    spec: str,
    *,
    image_size: int,
    num_test: int | None = None,
    num_train: int | None = None,
    seed: int = 0,
    memory_bytes: int = 0,
    prompts: str = DEFAULT_PROMPTS,
) -> EvalSet:
    """``demo_shapes`` (a demo task, with its train split), ``[CATALOG:]TEST[@TRAIN][#PROMPTS.json]`` (labelled
    folder / CSV / shards; without TRAIN the probes do not apply; CATALOG, a catalog entry, and PROMPTS, a file
    read by `read_set_prompts`, give the class names, templates and metric), ``retrieval:SPEC`` or ``demo`` (a
    retrieval set, as `openslip eval retrieval --dataset SPEC`). ``num_test`` / ``num_train``: images of the test
    / train split (a demo task renders that many; a larger file set is subsampled by `seed`, the same for every
    model).
    ``memory_bytes``: keep up to that many bytes of loaded images in memory (for evaluating several models).
    ``prompts``: the prompt set of a CATALOG entry (``openslip.eval.catalog.PROMPT_SETS``, training's eval.prompts)."""
    es = _open_eval_set(spec, image_size=image_size, num_test=num_test, num_train=num_train, seed=seed, prompts=prompts)
    if memory_bytes > 0:
        test = es.test.images if isinstance(es.test, RetrievalSet) else es.test
        for ds in (test, es.train):
            if ds is not None:
                ds.load = MemoizedLoad(ds.load, memory_bytes // 2)
    return es


def _open_eval_set(
    spec: str, *, image_size: int, num_test: int | None, num_train: int | None, seed: int, prompts: str
) -> EvalSet:
    if spec.startswith(RETRIEVAL_PREFIX) or spec == "demo":
        data = open_retrieval(spec.removeprefix(RETRIEVAL_PREFIX), image_size=image_size, n=num_test, seed=seed)
        return EvalSet(spec=spec, name=data.name, kind="retrieval", test=data)
    body, prompts_file = split_prompts_spec(spec)
    test_spec, _, train_spec = body.partition("@")
    if not test_spec:
        raise ConfigError(f"evaluation set {spec!r}: give TEST or TEST@TRAIN")
    if test_spec in demo_task_names() and not train_spec:
        train_spec = test_spec
    catalog, test_spec = split_catalog_spec(test_spec)  # `imagenet:/data/val@/data/train`: the catalog's prompts
    own = read_set_prompts(prompts_file) if prompts_file else {}
    options: dict[str, Any] = {"image_size": image_size, "seed": seed, "catalog": catalog, "prompts": prompts, **own}
    test = open_classification(test_spec, split="test", n=num_test, **options)
    if test_spec not in demo_task_names():  # a demo task renders `n` images; files are subsampled
        test = subsample(test, num_test, seed=seed)
    train = None
    if train_spec:
        train = open_classification(train_spec, split="train", n=num_train, **options)
        if train_spec not in demo_task_names():
            train = subsample(train, num_train, seed=seed)
        if train.classnames != test.classnames:
            raise ConfigError(
                f"evaluation set {spec!r}: train and test have different classes "
                f"({train.num_classes} vs {test.num_classes})"
            )
    if prompts_file:
        prompts_from = f"file {prompts_file}"
    elif catalog:
        prompts_from = f"catalog {catalog}"
    elif test_spec in demo_task_names():
        prompts_from = f"demo task {test_spec}"
    else:
        prompts_from = "class folder / label names, the default templates"
    return EvalSet(spec=spec, name=test.name, kind="classification", test=test, train=train, prompts_from=prompts_from)


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # metric name -> value, with "metric" (the reported one) and "score"
    outcomes: Outcomes = field(default_factory=dict)  # per-sample outcomes (openslip.eval.stats)
    scores: torch.Tensor | None = None  # zero-shot: the logits [N, C] (predictions CSV, confusion matrix)


@dataclass(frozen=True)
class Evaluation:
    name: str
    title: str  # a short column title
    kind: str  # the kind of set it reads
    needs_text: bool
    needs_train: bool
    run: Callable[[Any, EvalSet, EvalOptions], EvalResult]
    # what else the set must have with the default options (None: it applies), e.g. few-shot's k images per class
    check: Callable[[EvalSet], str | None] | None = None

    def why_not(self, model: ModelConfig, eval_set: EvalSet) -> str | None:
        """None when the evaluation applies to this model and set, else the reason it does not."""
        if eval_set.kind != self.kind:
            return f"{self.name} reads {self.kind} sets"
        if self.needs_text and model.text is None:
            return "no text tower (SimCLR only)"
        if self.needs_train and eval_set.train is None:
            return "the set has no train split (TEST@TRAIN)"
        return self.check(eval_set) if self.check is not None else None


EVALS: Registry[Evaluation] = Registry("evaluation")


def run_zeroshot(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    metrics, logits, labels = evaluate_zero_shot(
        model,
        es.test.for_protocol("zeroshot", opt.crop_fraction),
        batch_size=opt.batch_size,
        num_workers=opt.num_workers,
        device=opt.device,
        cache_dir=opt.cache_dir,
    )
    return EvalResult(metrics, classification_outcomes(logits, labels), scores=logits)


def run_retrieval(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    es.test.images.for_protocol("retrieval", opt.crop_fraction)
    i2t, t2i, owner = retrieval_ranks_of(
        model,
        es.test,
        batch_size=opt.batch_size,
        num_workers=opt.num_workers,
        device=opt.device,
        cache_dir=opt.cache_dir,
    )
    metrics = {"metric": "mean_recall", **recall_from_ranks(i2t, t2i)}
    metrics["score"] = metrics["mean_recall"]
    return EvalResult(metrics, retrieval_outcomes(i2t, t2i, owner))


def _probe_sets(es: EvalSet, protocol: str, opt: EvalOptions) -> tuple[ImageSet, ImageSet, FeatureOptions]:
    train = es.train.for_protocol(protocol, opt.crop_fraction)
    test = es.test.for_protocol(protocol, opt.crop_fraction)
    return train, test, FeatureOptions(opt.features, opt.batch_size, opt.num_workers, opt.device, opt.cache_dir)


def run_linear(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    """The logistic probe on frozen features (C chosen on ``es.val``, else on held-out train data; CLIP paper
    protocol), or with ``linear_protocol="sgd"`` the reference's SGD probe (`run_sgd_probe`)."""
    if opt.linear_protocol == "sgd":
        return run_sgd_probe(model, es, opt)
    val = es.val.for_protocol("linear", opt.crop_fraction) if es.val is not None else None
    metrics, scores, labels = linear_probe(model, *_probe_sets(es, "linear", opt), val=val, seed=opt.seed)
    outcomes = classification_outcomes(scores, labels) if distributed.is_main() else {}
    return EvalResult(metrics, distributed.broadcast_object(outcomes))


def run_sgd_probe(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    """The SLIP reference's linear probe (main_linear.py): a linear head trained by SGD on augmented images
    through the frozen backbone. Metrics only: the best epoch's score is not one classifier's outcomes."""
    if opt.features != "backbone":
        raise ConfigError("linear_protocol=sgd trains on the backbone features (drop --features embed)")
    bug = opt.linear_reference_lr_bug
    if bug is not None and bug < 0:
        raise ConfigError(f"linear_reference_lr_bug={bug} should be a process count (>= 1), or 0 for this run's")
    cfg = SGDProbeConfig(
        epochs=opt.linear_epochs,
        batch_size=opt.linear_batch_size,
        base_lr=opt.linear_lr,
        reference_lr_bug=bug is not None,
        reference_world_size=bug or None,
        seed=opt.seed,
        eval_every=opt.linear_eval_every,
        report=opt.linear_report,
    )
    image_size = opt.image_size or model.cfg.vision.image_size
    test = es.test.for_protocol("linear", opt.crop_fraction)
    train = copy.copy(es.train).with_transform(ProbeTransform(image_size, cfg.crop_scale))  # keep es.train's
    metrics = sgd_probe(
        model,
        train,
        test,
        num_classes=test.num_classes,
        metric=test.metric,
        config=cfg,
        device=opt.device,
        num_workers=opt.num_workers,
    )
    return EvalResult(metrics)


def run_knn(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    metrics, scores, labels = knn(model, *_probe_sets(es, "knn", opt), k=opt.knn_k, temperature=opt.knn_temperature)
    return EvalResult(metrics, classification_outcomes(scores, labels))


def fewshot_config(opt: EvalOptions) -> FewShotConfig:
    return FewShotConfig(shots=opt.fewshot_shots, seeds=opt.fewshot_seeds, l2=opt.fewshot_l2, seed=opt.seed)


def run_fewshot(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    """The few-shot ridge probe (`openslip.eval.fewshot`) on frozen features; only the train images some draw picks
    are encoded (a few per class, not the whole train split)."""
    cfg = fewshot_config(opt)
    train, test, fopt = _probe_sets(es, "fewshot", opt)
    for k in cfg.shots:  # before any image is encoded
        if (why := short_classes(train.labels, train.classnames, k)) is not None:
            raise ConfigError(f"fewshot: {why}; lower --shots or give a larger train split")
    rows = pool_rows(train.labels, train.num_classes, cfg)
    pool = SubsetImageSet(train, rows, f"fewshot:{cfg.headline}x{cfg.seeds}:{cfg.seed}")
    pool_x, _ = frozen_features(model, pool, fopt, "train")
    test_x, test_y = frozen_features(model, test, fopt, "test")
    metrics, outcomes = fewshot_probe(
        pool_x,
        torch.from_numpy(train.labels),
        test_x,
        test_y,
        classnames=test.classnames,
        metric=test.metric,
        config=cfg,
        rows=rows,
    )
    return EvalResult(metrics, outcomes)


def _fewshot_applies(es: EvalSet) -> str | None:
    """Training's and compare's few-shot (the default shots): every class needs the largest k train images."""
    return short_classes(es.train.labels, es.train.classnames, max(DEFAULT_SHOTS))


def run_finetune(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    """BEiT-style end-to-end finetuning (`openslip finetune`), resumable per epoch in ``opt.finetune_dir``."""
    cfg = config_from_preset(opt.finetune_preset, epochs=opt.finetune_epochs, seed=opt.seed)
    image_size = model.cfg.vision.image_size
    es.test.for_protocol("finetune", opt.crop_fraction)
    train = copy.copy(es.train).with_transform(FinetuneTransform.from_config(image_size, cfg))  # keep es.train's
    metrics, classifier = finetune(
        model,
        train,
        es.test,
        num_classes=es.test.num_classes,
        metric=es.metric,
        config=cfg,
        device=opt.device,
        num_workers=opt.num_workers,
        out_dir=opt.finetune_dir,
        log=False,
        report="final",  # the outcomes below are the last epoch's classifier's; best_score is in the metrics too
    )
    with torch.no_grad():
        logits, labels = extract_features(
            classifier, es.test, batch_size=opt.batch_size, device=opt.device, normalize=False
        )
    return EvalResult(metrics, classification_outcomes(logits, labels))


for _e in (
    Evaluation("zeroshot", "zero-shot", "classification", needs_text=True, needs_train=False, run=run_zeroshot),
    Evaluation("linear", "linear probe", "classification", needs_text=False, needs_train=True, run=run_linear),
    Evaluation("knn", "kNN", "classification", needs_text=False, needs_train=True, run=run_knn),
    Evaluation(
        "fewshot",
        "few-shot",
        "classification",
        needs_text=False,
        needs_train=True,
        run=run_fewshot,
        check=_fewshot_applies,
    ),
    Evaluation("finetune", "finetune", "classification", needs_text=False, needs_train=True, run=run_finetune),
    Evaluation("retrieval", "retrieval", "retrieval", needs_text=True, needs_train=False, run=run_retrieval),
):
    EVALS.register(_e.name, _e)
