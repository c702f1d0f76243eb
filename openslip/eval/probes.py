"""The frozen-feature probes as library calls, `(model, train, test) -> metrics`: the logistic linear probe and
kNN. `openslip eval linear|knn`, `openslip compare` (`openslip.eval.suite`) and Python users call these; the
fits themselves are in `openslip.eval.logistic` and `openslip.eval.knn`.

Features are extracted data-parallel (every rank encodes its share, each image once) and gathered; the logistic
fit runs once, on rank 0 (on its device, e.g. a GPU), and its metrics are broadcast, so every rank returns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from openslip import distributed
from openslip.eval.features import dataset_features
from openslip.eval.knn import knn_scores
from openslip.eval.logistic import logistic_probe
from openslip.eval.metrics import classification_metrics


@dataclass
class FeatureOptions:
    """How frozen features are taken: which feature, and the extraction's batch, workers, device and cache."""

    kind: str = "backbone"  # "backbone": the ViT's CLS feature; "embed": the CLIP image embedding
    batch_size: int = 256
    num_workers: int = 0
    device: torch.device | str = "cpu"
    cache_dir: str | None = None


def frozen_features(model: Any, dataset: Any, opt: FeatureOptions, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D], labels [N]) of an ImageSet, gathered on every rank."""
    return dataset_features(
        model,
        dataset,
        kind=opt.kind,
        batch_size=opt.batch_size,
        num_workers=opt.num_workers,
        device=opt.device,
        cache_dir=opt.cache_dir,
        desc=f"{what} features {dataset.name}",
    )


def linear_probe(
    model: Any, train: Any, test: Any, opt: FeatureOptions, *, val: Any = None, seed: int = 0
) -> tuple[dict[str, Any], torch.Tensor | None, torch.Tensor]:
    """The logistic probe (CLIP's protocol): (metrics on every rank, test scores [N, C] on rank 0 else None,
    test labels [N]). ``val``: a set to choose C on, instead of 20% of ``train``."""
    train_x, train_y = frozen_features(model, train, opt, "train")
    test_x, test_y = frozen_features(model, test, opt, "test")
    val_x = val_y = None
    if val is not None:
        val_x, val_y = frozen_features(model, val, opt, "val")
    metrics: dict[str, Any] = {}
    scores = None
    if distributed.is_main():  # one fit; the other ranks wait for its result
        on_device = [None if t is None else t.to(opt.device) for t in (train_x, test_x, val_x)]
        metrics, scores = logistic_probe(
            on_device[0],
            train_y,
            on_device[1],
            test_y,
            num_classes=test.num_classes,
            metric=test.metric,
            val_x=on_device[2],
            val_y=val_y,
            seed=seed,
        )
    return distributed.broadcast_object(metrics), scores, test_y


def knn(
    model: Any, train: Any, test: Any, opt: FeatureOptions, *, k: int = 20, temperature: float = 0.07
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Cosine kNN of the test features among the train features (k neighbours voting with exp(sim / T)):
    (metrics, scores [N, C], test labels [N]), the same on every rank."""
    train_x, train_y = frozen_features(model, train, opt, "train")
    test_x, test_y = frozen_features(model, test, opt, "test")
    scores = knn_scores(train_x, train_y, test_x, num_classes=test.num_classes, k=k, temperature=temperature)
    metrics = classification_metrics(scores, test_y, test.metric)
    metrics.update(
        {"k": float(min(k, len(train_y))), "temperature": float(temperature), "num_train": float(len(train_y))}
    )
    return metrics, scores, test_y
