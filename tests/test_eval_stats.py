"""Scores recomputed from per-sample outcomes equal the evaluations' metrics; intervals and paired tests behave."""

import numpy as np
import pytest
import torch

from openslip.eval.metrics import classification_metrics, recall_from_ranks, retrieval_ranks
from openslip.eval.stats import (
    bootstrap_interval,
    classification_outcomes,
    paired_difference,
    retrieval_outcomes,
    score,
)

CASES = [(c, m) for c in (2, 3, 10) for m in ("top1", "top5", "mean_per_class", "top1_top5_mean")] + [(2, "roc_auc")]


@pytest.mark.parametrize("classes,metric", CASES)
def test_classification_score_matches_metrics(classes, metric):
    g = torch.Generator().manual_seed(classes)
    logits = torch.randn(300, classes, generator=g)
    labels = torch.randint(0, classes, (300,), generator=g)
    expected = classification_metrics(logits, labels, metric)["score"]
    assert score(classification_outcomes(logits, labels), metric) == pytest.approx(
        expected, abs=1e-4
    )  # the metrics count in float32


def test_retrieval_score_matches_recall():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    owner = torch.arange(40).repeat_interleave(3)
    txt = torch.nn.functional.normalize(img[owner] + 0.8 * torch.randn(120, 8, generator=g), dim=1)
    i2t, t2i = retrieval_ranks(img, txt, owner)
    expected = recall_from_ranks(i2t, t2i)
    outcomes = retrieval_outcomes(i2t, t2i, owner)
    for key in ("mean_recall", "image_to_text_R@1", "text_to_image_R@5"):
        assert score(outcomes, key) == pytest.approx(expected[key], abs=1e-4)  # the metrics count in float32
    # Resampling images carries their captions: drawing every image once is the full set.
    assert score(outcomes, "mean_recall", np.arange(40)) == pytest.approx(expected["mean_recall"])


def _outcomes(hits: np.ndarray) -> dict:
    labels = np.zeros(len(hits), dtype=np.int64)
    return {"labels": labels, "top5": np.where(hits, 0, 1)[:, None]}


def test_bootstrap_interval_covers_the_value_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = bootstrap_interval([_outcomes(rng.random(100) < 0.6)], "top1", reps=500)
    large = bootstrap_interval([_outcomes(rng.random(10000) < 0.6)], "top1", reps=200)
    assert small["lo"] <= small["value"] <= small["hi"]
    assert (large["hi"] - large["lo"]) < (small["hi"] - small["lo"]) / 4
    # The binomial standard error is sqrt(p (1 - p) / n): 4.9 points at n = 100.
    assert small["se"] == pytest.approx(100 * np.sqrt(0.6 * 0.4 / 100), rel=0.25)


def test_paired_difference_detects_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(1)
    base = rng.random(400) < 0.5
    better = base | (rng.random(400) < 0.1)  # the same images right, plus some more
    d = paired_difference([_outcomes(better)], [_outcomes(base)], "top1", reps=1000)
    assert d["value"] > 0 and d["lo"] > 0 and d["p"] < 0.01
    same = paired_difference([_outcomes(base)], [_outcomes(base)], "top1", reps=200)
    assert same["value"] == 0 and same["p"] == 1.0
    with pytest.raises(ValueError, match="different test sets"):
        paired_difference([_outcomes(base)], [_outcomes(base[:10])], "top1")


def _seeded_runs(rng: np.random.Generator, n: int, accuracies: list[float]) -> list[dict]:
    """One run per seed: each image is right with that run's accuracy."""
    return [_outcomes(rng.random(n) < acc) for acc in accuracies]


def _synthetic_p(rng: np.random.Generator, effect: float, seed_sd: float, seeds: int = 3) -> dict:
    """Two methods whose every pre-training run draws its own accuracy (a seed effect of `seed_sd`), the first
    `effect` above the second in expectation, scored on one shared test set of 400 images."""
    acc_a = list(np.clip(0.5 + effect + seed_sd * rng.standard_normal(seeds), 0.02, 0.98))
    acc_b = list(np.clip(0.5 + seed_sd * rng.standard_normal(seeds), 0.02, 0.98))
    return paired_difference(_seeded_runs(rng, 400, acc_a), _seeded_runs(rng, 400, acc_b), "top1", reps=100)


def test_a_pure_seed_effect_is_not_called_significant():
    """Identical methods in expectation, large per-seed offsets (10 points), 3 seeds: p < 0.05 in about 5% of
    the draws, as a test at that level must (a test over images alone calls most of them significant)."""
    rng = np.random.default_rng(0)
    results = [_synthetic_p(rng, effect=0.0, seed_sd=0.10) for _ in range(300)]
    false_positives = np.mean([d["p"] < 0.05 for d in results])
    assert false_positives <= 0.09, false_positives
    assert all(d["over"] == "images+seeds" for d in results)
    # the intervals cover the true difference (0) as often as they claim
    coverage = np.mean([d["lo"] <= 0 <= d["hi"] for d in results])
    assert coverage >= 0.91, coverage


def test_a_consistent_effect_across_seeds_is_detected():
    rng = np.random.default_rng(1)
    results = [_synthetic_p(rng, effect=0.15, seed_sd=0.01) for _ in range(50)]
    assert np.mean([d["p"] < 0.05 for d in results]) >= 0.9
    assert all(d["value"] > 0 for d in results) and np.mean([d["lo"] > 0 for d in results]) >= 0.9


def test_several_seeds_widen_a_cell_by_their_spread():
    rng = np.random.default_rng(2)
    runs = _seeded_runs(rng, 400, [0.4, 0.6, 0.8])
    cell = bootstrap_interval(runs, "top1", reps=200)
    images_only = bootstrap_interval(runs[:1], "top1", reps=200)
    assert cell["over"] == "images+seeds" and images_only["over"] == "images"
    assert cell["lo"] < cell["value"] < cell["hi"]
    # the seeds' spread (about 20 points) dominates: the interval is many times the images-only one
    assert (cell["hi"] - cell["lo"]) > 5 * (images_only["hi"] - images_only["lo"])
    with pytest.raises(ValueError, match="one run per seed"):
        paired_difference(runs, runs[:2], "top1")


def test_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from openslip.eval.stats import t_quantile, t_two_sided_p

    for df in (1, 2, 3.5, 30):
        assert t_quantile(0.95, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
        for t in (0.3, 2.0, 9.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9)


def test_a_seed_aware_interval_names_no_impossible_score():
    """Three seeds far apart (0 %, 50 %, 100 % correct): the t interval would pass 0 and 100; it is cut there."""
    labels = torch.zeros(10, dtype=torch.long)
    runs = [classification_outcomes(_logits_right(labels, k), labels) for k in (0, 5, 10)]
    ci = bootstrap_interval(runs, "top1", reps=200)
    assert 0.0 <= ci["lo"] < ci["value"] < ci["hi"] <= 100.0 and ci["lo"] == 0.0 and ci["hi"] == 100.0
    d = paired_difference(runs, runs[::-1], "top1", reps=200)
    assert -100.0 <= d["lo"] and d["hi"] <= 100.0


def _logits_right(labels: torch.Tensor, k: int) -> torch.Tensor:
    """[N, 2] logits that classify the first k samples right (label 0) and the rest wrong."""
    logits = torch.zeros(len(labels), 2)
    logits[:k, 0] = 1.0
    logits[k:, 1] = 1.0
    return logits
