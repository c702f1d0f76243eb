"""Evaluations by name (DESIGN §6): ``EVALS[name].run(model, eval_set, options) -> EvalResult``.

Each evaluation returns the metrics of its `openslip eval` command (with ``metric`` and ``score``) and the
per-sample outcomes behind them (``openslip.eval.stats``), so a caller can put an interval on every score
and pair two models on the same images. ``Evaluation.why_not`` says when one does not apply (zero-shot
needs a text tower, a probe needs a train split); `openslip compare` shows those cells as "—".
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from openslip import distributed
from openslip.data.augment.classify import FinetuneTransform
from openslip.data.demo.tasks import demo_task_names
from openslip.errors import ConfigError
from openslip.eval.catalog import split_catalog_spec
from openslip.eval.datasets import ImageSet, RetrievalSet, open_classification, open_retrieval
from openslip.eval.features import extract_features
from openslip.eval.finetune import config_from_preset, finetune
from openslip.eval.metrics import recall_from_ranks
from openslip.eval.probes import FeatureOptions, knn, linear_probe
from openslip.eval.retrieval import retrieval_ranks_of
from openslip.eval.stats import Outcomes, classification_outcomes, retrieval_outcomes, score
from openslip.eval.zero_shot import evaluate_zero_shot
from openslip.models.config import ModelConfig
from openslip.registry import Registry

RETRIEVAL_PREFIX = "retrieval:"


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


@dataclass
class EvalSet:
    """A named evaluation set: a labelled test set (and its train split, for probes) or a retrieval set."""

    spec: str  # as the user wrote it
    name: str
    kind: str  # "classification" or "retrieval"
    test: ImageSet | RetrievalSet
    train: ImageSet | None = None

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
) -> EvalSet:
    """``demo_shapes`` (a demo task, with its train split), ``TEST[@TRAIN]`` (labelled folder / CSV / shards;
    without TRAIN the probes do not apply), ``retrieval:SPEC`` or ``demo`` (a retrieval set, as
    `openslip eval retrieval --dataset SPEC`). ``memory_bytes``: keep up to that many bytes of loaded images
    in memory (for evaluating several models on the set)."""
    es = _open_eval_set(spec, image_size=image_size, num_test=num_test, num_train=num_train, seed=seed)
    if memory_bytes > 0:
        test = es.test.images if isinstance(es.test, RetrievalSet) else es.test
        for ds in (test, es.train):
            if ds is not None:
                ds.load = MemoizedLoad(ds.load, memory_bytes // 2)
    return es


def _open_eval_set(spec: str, *, image_size: int, num_test: int | None, num_train: int | None, seed: int) -> EvalSet:
    if spec.startswith(RETRIEVAL_PREFIX) or spec == "demo":
        data = open_retrieval(spec.removeprefix(RETRIEVAL_PREFIX), image_size=image_size, n=num_test, seed=seed)
        return EvalSet(spec=spec, name=data.name, kind="retrieval", test=data)
    test_spec, _, train_spec = spec.partition("@")
    if not test_spec:
        raise ConfigError(f"evaluation set {spec!r}: give TEST or TEST@TRAIN")
    if test_spec in demo_task_names() and not train_spec:
        train_spec = test_spec
    catalog, test_spec = split_catalog_spec(test_spec)  # `imagenet:/data/val@/data/train`: the catalog's prompts
    test = open_classification(test_spec, split="test", image_size=image_size, n=num_test, seed=seed, catalog=catalog)
    train = None
    if train_spec:
        train = open_classification(
            train_spec, split="train", image_size=image_size, n=num_train, seed=seed, catalog=catalog
        )
        if train.classnames != test.classnames:
            raise ConfigError(
                f"evaluation set {spec!r}: train and test have different classes "
                f"({train.num_classes} vs {test.num_classes})"
            )
    return EvalSet(spec=spec, name=test.name, kind="classification", test=test, train=train)


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # metric name -> value, with "metric" (the reported one) and "score"
    outcomes: Outcomes = field(default_factory=dict)  # per-sample outcomes (openslip.eval.stats)


@dataclass(frozen=True)
class Evaluation:
    name: str
    title: str  # a short column title
    kind: str  # the kind of set it reads
    needs_text: bool
    needs_train: bool
    run: Callable[[Any, EvalSet, EvalOptions], EvalResult]

    def why_not(self, model: ModelConfig, eval_set: EvalSet) -> str | None:
        """None when the evaluation applies to this model and set, else the reason it does not."""
        if eval_set.kind != self.kind:
            return f"{self.name} reads {self.kind} sets"
        if self.needs_text and model.text is None:
            return "no text tower (SimCLR only)"
        if self.needs_train and eval_set.train is None:
            return "the set has no train split (TEST@TRAIN)"
        return None


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
    return EvalResult(metrics, classification_outcomes(logits, labels))


def run_retrieval(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    es.test.images.for_protocol("retrieval", opt.crop_fraction)
    i2t, t2i, owner = retrieval_ranks_of(
        model, es.test, batch_size=opt.batch_size, num_workers=opt.num_workers, device=opt.device
    )
    metrics = {"metric": "mean_recall", **recall_from_ranks(i2t, t2i)}
    metrics["score"] = metrics["mean_recall"]
    return EvalResult(metrics, retrieval_outcomes(i2t, t2i, owner))


def _probe_sets(es: EvalSet, protocol: str, opt: EvalOptions) -> tuple[ImageSet, ImageSet, FeatureOptions]:
    train = es.train.for_protocol(protocol, opt.crop_fraction)
    test = es.test.for_protocol(protocol, opt.crop_fraction)
    return train, test, FeatureOptions("backbone", opt.batch_size, opt.num_workers, opt.device, opt.cache_dir)


def run_linear(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    """The logistic probe on frozen backbone features (C chosen on held-out train data; CLIP paper protocol)."""
    metrics, scores, labels = linear_probe(model, *_probe_sets(es, "linear", opt), seed=opt.seed)
    outcomes = classification_outcomes(scores, labels) if distributed.is_main() else {}
    return EvalResult(metrics, distributed.broadcast_object(outcomes))


def run_knn(model: Any, es: EvalSet, opt: EvalOptions) -> EvalResult:
    metrics, scores, labels = knn(model, *_probe_sets(es, "knn", opt), k=opt.knn_k, temperature=opt.knn_temperature)
    return EvalResult(metrics, classification_outcomes(scores, labels))


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
    Evaluation("finetune", "finetune", "classification", needs_text=False, needs_train=True, run=run_finetune),
    Evaluation("retrieval", "retrieval", "retrieval", needs_text=True, needs_train=False, run=run_retrieval),
):
    EVALS.register(_e.name, _e)
