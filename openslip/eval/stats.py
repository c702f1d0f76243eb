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

With several pre-training seeds, a score varies with the seed as well as with the images, and often more
(on small runs the seed moved one zero-shot cell by ±19 points). The intervals and p-values then add the
seed-to-seed variance to the images' (``seed_aware``): with S seeds, the standard error of the seed-mean is
``sqrt(s² / S + se_images²)`` (s: the standard deviation of the per-seed scores or differences; se_images: the
paired bootstrap over images of the seed-mean), and the interval and p-value use Student's t with the
Welch–Satterthwaite degrees of freedom (S − 1 for the seed part, the image part taken as exact). A bootstrap
over 2 or 3 seeds cannot stand in for it: it treats the seeds drawn as the whole population, so whenever
every seed's difference has the same sign (a chance of 1 in 4 with 3 seeds and no effect at all), every
resample has it too and p is at its floor (docs/COMPARE.md gives the measured rates).
"""

from __future__ import annotations

import math
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
    """Score (mean over `runs`, one per pre-training seed), its standard error and interval.

    One run: the percentile interval of the bootstrap over test samples. Several: the seed-aware t interval
    (module docstring), which adds the spread of the per-seed scores to the images' bootstrap variance."""
    n = _check_same_units(runs)
    stats = np.array([_mean_score(runs, metric, idx) for idx in _draws(n, reps, seed)])
    value = _mean_score(runs, metric, None)
    if len(runs) == 1:
        lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
        return {"value": value, "se": float(stats.std(ddof=1)), "lo": float(lo), "hi": float(hi), "over": "images"}
    per_seed = [score(o, metric) for o in runs]
    return _within(value, seed_aware(value, per_seed, float(stats.std(ddof=1)), level), 0.0, 100.0)


def paired_difference(
    a: Sequence[Outcomes], b: Sequence[Outcomes], metric: str, *, reps: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Score of `a` minus score of `b` on the same test samples, ``a[k]`` and ``b[k]`` being the runs of seed k.

    One seed: the difference, its paired-bootstrap percentile interval and a two-sided p-value (twice the smaller
    tail of the resampled differences around 0). Several seeds: the seed-aware t interval and p-value of the
    seed-mean difference (module docstring)."""
    if len(a) != len(b):
        raise ValueError(f"paired runs need one run per seed on each side ({len(a)} vs {len(b)})")
    n = _check_same_units([*a, *b])
    diffs = np.array([_mean_score(a, metric, idx) - _mean_score(b, metric, idx) for idx in _draws(n, reps, seed)])
    value = _mean_score(a, metric, None) - _mean_score(b, metric, None)
    if len(a) > 1:
        per_seed = [score(x, metric) - score(y, metric) for x, y in zip(a, b, strict=True)]
        return _within(value, seed_aware(value, per_seed, float(diffs.std(ddof=1)), level), -100.0, 100.0)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    tail = min((diffs <= 0).mean(), (diffs >= 0).mean())
    p = min(1.0, 2.0 * max(float(tail), 1.0 / reps))  # a bootstrap cannot resolve p below 1 / reps
    return {"value": value, "lo": float(lo), "hi": float(hi), "p": p, "over": "images"}


def _within(value: float, interval: dict[str, float], low: float, high: float) -> dict[str, float]:
    """A t interval cut to what the statistic can take (a score in %: 0..100; a difference: -100..100): with 2 or 3
    seeds a wide interval would otherwise name impossible values. The standard error and p are left as they are."""
    return {"value": value, **interval, "lo": max(interval["lo"], low), "hi": min(interval["hi"], high)}


def seed_aware(value: float, per_seed: Sequence[float], se_images: float, level: float = 0.95) -> dict[str, float]:
    """Standard error, t interval and two-sided p-value (of ``value`` against 0) of a mean over S >= 2 seeds:
    ``se² = s² / S + se_images²`` with Welch–Satterthwaite degrees of freedom ``(S - 1) (se² / (s² / S))²``."""
    s_count = len(per_seed)
    seed_var = float(np.var(per_seed, ddof=1)) / s_count
    se = math.sqrt(seed_var + se_images**2)
    df = math.inf if seed_var == 0 else (s_count - 1) * (se**2 / seed_var) ** 2
    half = t_quantile(level, df) * se
    if se == 0:
        p = 1.0 if value == 0 else 0.0
    else:
        p = t_two_sided_p(value / se, df)
    return {"se": se, "lo": value - half, "hi": value + half, "p": p, "df": df, "over": "images+seeds"}


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom (the normal for df = inf)."""
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(level: float, df: float) -> float:
    """The t such that P(|T| <= t) = level (e.g. 12.71 for 0.95 at df = 1, 1.96 at df = inf)."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > 1 - level:
        hi *= 2.0
    for _ in range(100):  # bisection: the two-sided p falls as t grows
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 1 - level else (lo, mid)
    return 0.5 * (lo + hi)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (numpy has none, and scipy
    is not a dependency)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use the symmetry on the other
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), evaluated by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _check_same_units(runs: Sequence[Outcomes]) -> int:
    sizes = {num_units(o) for o in runs}
    if len(sizes) != 1:
        raise ValueError(f"outcomes of different test sets cannot be paired (sizes {sorted(sizes)})")
    return sizes.pop()
