"""Uncertainty of evaluation scores from their per-sample outcomes: bootstrap intervals and paired tests.

A score on a few hundred test images moves by several points when the images change, so `openslip compare`
reports every number with a 95% bootstrap interval over test samples, and each difference between two
methods with a *paired* bootstrap: both scores are recomputed on the same resampled images, which cancels
the images' shared difficulty and is far more sensitive than comparing two intervals.

Per-sample outcomes (``Outcomes``) are what an evaluation saves next to its metrics:
- classification: ``labels`` [N] and ``top5`` [N, min(5, C)] (ranked predictions), plus ``margin`` [N]
  (class 1 minus class 0 score) on binary tasks for ROC-AUC;
- retrieval: ``i2t_rank`` [N_images], ``t2i_rank`` [N_captions] and ``owner`` [N_captions] (a caption's
  image); images are the resampled unit, each taking its captions along.
Scores recomputed from outcomes equal the evaluation's own metrics (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from openslip.eval.metrics import roc_auc

Outcomes = dict[str, np.ndarray]

RETRIEVAL_KS = (1, 5, 10)


def classification_outcomes(logits: torch.Tensor, labels: torch.Tensor) -> Outcomes:
    """The per-sample outcomes of a classifier's scores [N, C] (see the module docstring)."""
    logits = logits.detach().float().cpu()
    out = {
        "labels": labels.detach().cpu().long().numpy(),
        "top5": logits.topk(min(5, logits.shape[1]), dim=1).indices.numpy(),
    }
    if logits.shape[1] == 2:
        out["margin"] = (logits[:, 1] - logits[:, 0]).numpy()
    return out


def retrieval_outcomes(i2t_rank: torch.Tensor, t2i_rank: torch.Tensor, owner: torch.Tensor) -> Outcomes:
    return {
        "i2t_rank": i2t_rank.cpu().long().numpy(),
        "t2i_rank": t2i_rank.cpu().long().numpy(),
        "owner": torch.as_tensor(owner).cpu().long().numpy(),
    }


def num_units(outcomes: Outcomes) -> int:
    """The number of resampled units: test images."""
    return len(outcomes["labels"]) if "labels" in outcomes else len(outcomes["i2t_rank"])


def score(outcomes: Outcomes, metric: str, idx: np.ndarray | None = None) -> float:
    """The `metric` (percent) on the units `idx` (with repeats, as a bootstrap draws them; None: all)."""
    if "labels" in outcomes:
        return _classification_score(outcomes, metric, idx)
    return _retrieval_score(outcomes, metric, idx)


def _classification_score(o: Outcomes, metric: str, idx: np.ndarray | None) -> float:
    labels, top5 = o["labels"], o["top5"]
    if idx is not None:
        labels, top5 = labels[idx], top5[idx]
    hit1 = top5[:, 0] == labels
    if metric == "top1":
        return 100.0 * float(hit1.mean())
    hit5 = (top5 == labels[:, None]).any(axis=1)
    if metric == "top5":
        return 100.0 * float(hit5.mean())
    if metric == "top1_top5_mean":
        return 50.0 * float(hit1.mean() + hit5.mean())
    if metric == "mean_per_class":
        classes, inverse = np.unique(labels, return_inverse=True)
        recall = np.bincount(inverse, weights=hit1, minlength=len(classes)) / np.bincount(inverse)
        return 100.0 * float(recall.mean())
    if metric == "roc_auc":
        margin = o["margin"] if idx is None else o["margin"][idx]
        return roc_auc(torch.from_numpy(np.asarray(margin, dtype=np.float64)), torch.from_numpy(labels))
    raise ValueError(f"no per-sample score for metric {metric!r}")


def _retrieval_score(o: Outcomes, metric: str, idx: np.ndarray | None) -> float:
    """Recall@k or their mean; resampling images weights each caption by how often its image was drawn."""
    n_img = len(o["i2t_rank"])
    weight = np.ones(n_img) if idx is None else np.bincount(idx, minlength=n_img).astype(np.float64)
    cap_weight = weight[o["owner"]]
    recalls = {}
    for k in RETRIEVAL_KS:
        recalls[f"image_to_text_R@{k}"] = 100.0 * float((weight * (o["i2t_rank"] < k)).sum() / weight.sum())
        recalls[f"text_to_image_R@{k}"] = 100.0 * float((cap_weight * (o["t2i_rank"] < k)).sum() / cap_weight.sum())
    if metric == "mean_recall":
        return float(np.mean(list(recalls.values())))
    if metric in recalls:
        return recalls[metric]
    raise ValueError(f"no per-sample score for retrieval metric {metric!r}")


def _draws(n: int, reps: int, seed: int) -> np.ndarray:
    """[reps, n] unit indices drawn with replacement; fixed by `seed`, so a rerun reports the same interval."""
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def _mean_score(runs: Sequence[Outcomes], metric: str, idx: np.ndarray | None) -> float:
    """The score averaged over runs (seeds) that share one test set."""
    return float(np.mean([score(o, metric, idx) for o in runs]))


def bootstrap_interval(
    runs: Sequence[Outcomes], metric: str, *, reps: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Score (mean over `runs`), its bootstrap standard error and percentile interval over test samples."""
    n = _check_same_units(runs)
    stats = np.array([_mean_score(runs, metric, idx) for idx in _draws(n, reps, seed)])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"value": _mean_score(runs, metric, None), "se": float(stats.std(ddof=1)), "lo": float(lo), "hi": float(hi)}


def paired_difference(
    a: Sequence[Outcomes], b: Sequence[Outcomes], metric: str, *, reps: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Score of `a` minus score of `b` on the same test samples: the difference, its paired-bootstrap interval
    and a two-sided p-value (twice the smaller tail of the resampled differences around 0)."""
    n = _check_same_units([*a, *b])
    diffs = np.array([_mean_score(a, metric, idx) - _mean_score(b, metric, idx) for idx in _draws(n, reps, seed)])
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    tail = min((diffs <= 0).mean(), (diffs >= 0).mean())
    p = min(1.0, 2.0 * max(float(tail), 1.0 / reps))  # a bootstrap cannot resolve p below 1 / reps
    value = _mean_score(a, metric, None) - _mean_score(b, metric, None)
    return {"value": value, "lo": float(lo), "hi": float(hi), "p": p}


def _check_same_units(runs: Sequence[Outcomes]) -> int:
    sizes = {num_units(o) for o in runs}
    if len(sizes) != 1:
        raise ValueError(f"outcomes of different test sets cannot be paired (sizes {sorted(sizes)})")
    return sizes.pop()
