"""Few-shot linear evaluation: a closed-form ridge regression on k train images per class, averaged over seeds.

The kind of probe big_vision reports beside zero-shot (its few-shot evaluator fits a least-squares classifier in
closed form, with no iterations to tune): features are L2-normalised and given a constant 1 (the bias), the targets
are one-hot, and the weights are

    W = (Xᵀ X + λ I)⁻¹ Xᵀ Y        X [n, d + 1], Y [n, C], W [d + 1, C]

solved in float64; with fewer samples than dimensions (the usual few-shot case) the same W is taken through the
n x n system, W = Xᵀ (X Xᵀ + λ I)⁻¹ Y. A test image's class is the argmax of its row of ``X_test W``.

λ is a documented constant (``fewshot_l2``, default 1): unit-norm features put a total energy of n on the
diagonal of Xᵀ X, so λ = 1 weighs the penalty as one training image does, whatever the feature width. The bias
column is penalised with the rest (one closed form; with unit-norm features its scale matches theirs).

For each seed the k images of every class are the first k of a seeded permutation of that class's train images,
so the samples of a smaller k are part of a larger k's (the curve over k is not blurred by a fresh draw per k).
A class with fewer than k train images is a one-line error naming it: scoring it with fewer would change the
protocol without saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from openslip.errors import ConfigError
from openslip.eval.stats import Outcomes, classification_outcomes, score

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_SEEDS = 3
DEFAULT_L2 = 1.0


@dataclass(frozen=True)
class FewShotConfig:
    shots: tuple[int, ...] = DEFAULT_SHOTS  # k, images per class; the largest is the reported (headline) one
    seeds: int = DEFAULT_SEEDS  # draws of the k images, averaged
    l2: float = DEFAULT_L2  # ridge λ on unit-norm features
    seed: int = 0  # the first draw's seed (draw s uses (seed, s))

    def __post_init__(self) -> None:
        check_shots(self.shots)
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"fewshot_seeds={self.seeds!r} should be a positive integer (draws averaged)")
        if not self.l2 > 0:
            raise ConfigError(f"fewshot_l2={self.l2:g} should be > 0 (the ridge penalty)")

    @property
    def headline(self) -> int:
        return max(self.shots)


def check_shots(shots: Sequence[Any]) -> tuple[int, ...]:
    """The shots as sorted distinct positive integers; anything else is a one-line ConfigError."""
    if not shots or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in shots):
        raise ConfigError(f"shots should be positive integers, e.g. 1,5,10,25; got {','.join(map(str, shots))!r}")
    return tuple(sorted(set(shots)))


def parse_shots(text: str) -> tuple[int, ...]:
    """``"1,5,10,25"`` -> (1, 5, 10, 25) (`--shots`)."""
    items = [t.strip() for t in str(text).split(",")]
    if not all(t.isdigit() for t in items):
        raise ConfigError(f"--shots should be positive integers separated by commas, e.g. 1,5,10,25; got {text!r}")
    return check_shots([int(t) for t in items])


def short_classes(labels: np.ndarray, classnames: Sequence[str], k: int) -> str | None:
    """None when every class has at least ``k`` of ``labels``, else why not (one line)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classnames))
    short = np.flatnonzero(counts < k)
    if not len(short):
        return None
    fewest = int(short[np.argmin(counts[short])])
    return (
        f"{k}-shot needs {k} train images of every class, but {len(short)} of {len(classnames)} classes have fewer "
        f"(fewest: {classnames[fewest]!r} with {int(counts[fewest])})"
    )


def draw_shots(labels: np.ndarray, num_classes: int, k: int, seed: tuple[int, int]) -> np.ndarray:
    """Indices into ``labels``: the first ``k`` of a seeded permutation of each class's images, class by class.
    The permutation depends on the seed only, so a draw of k is the start of the same seed's draw of any k' > k."""
    rng = np.random.default_rng(list(seed))
    picked = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        picked.append(members[rng.permutation(len(members))][:k])
    return np.concatenate(picked)


def _design(x: torch.Tensor) -> torch.Tensor:
    """Unit-norm float64 features with a constant 1 appended: [n, d] -> [n, d + 1]."""
    x = torch.nn.functional.normalize(x.double(), dim=1)
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float) -> torch.Tensor:
    """The ridge weights W [d + 1, C] (float64) of features x [n, d] and labels y [n] (module docstring)."""
    a = _design(x)
    targets = torch.nn.functional.one_hot(y.long().to(a.device), num_classes).double()  # [n, C]
    n, d = a.shape
    if n < d:  # the n x n system: W = Aᵀ (A Aᵀ + λ I)⁻¹ Y
        gram = a @ a.T + l2 * torch.eye(n, dtype=a.dtype, device=a.device)
        return a.T @ torch.linalg.solve(gram, targets)
    gram = a.T @ a + l2 * torch.eye(d, dtype=a.dtype, device=a.device)
    return torch.linalg.solve(gram, a.T @ targets)


def ridge_scores(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Class scores [m, C] of features x [m, d]."""
    return _design(x.to(w.device)) @ w


def pool_rows(labels: np.ndarray, num_classes: int, config: FewShotConfig) -> np.ndarray:
    """The sorted train indices any draw of `config` picks: the only train images whose features are needed."""
    draws = [draw_shots(labels, num_classes, config.headline, (config.seed, s)) for s in range(config.seeds)]
    return np.unique(np.concatenate(draws))


def fewshot_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    classnames: Sequence[str],
    metric: str,
    config: FewShotConfig,
    rows: np.ndarray | None = None,
) -> tuple[dict[str, Any], Outcomes]:
    """(metrics, outcomes) of the few-shot probe. ``train_y`` [N_train]: the labels of the whole train split;
    ``train_x``: the features of its images ``rows`` (sorted; `pool_rows`), or of all of them (None).

    Metrics: ``{k}shot`` (the mean over seeds of the metric, %), ``{k}shot_std`` (their sample standard
    deviation; 0 with one seed), ``{k}shot_seeds`` (each seed's) for every k; ``score`` is the headline k's mean
    (the largest k, also ``shots``). Outcomes: the headline k's per-image outcomes of every seed, one seed after
    another, so that `openslip compare` recomputes the score from them (for top-1, top-5 and mean per-class recall
    their pooled score is the mean over seeds exactly; for ROC-AUC the pooled AUC)."""
    num_classes = len(classnames)
    labels = np.asarray(train_y.cpu() if isinstance(train_y, torch.Tensor) else train_y, dtype=np.int64)
    for k in config.shots:
        if (why := short_classes(labels, classnames, k)) is not None:
            raise ConfigError(f"fewshot: {why}; lower --shots or give a larger train split")
    metrics: dict[str, Any] = {"metric": metric}
    headline_logits: list[torch.Tensor] = []
    for k in config.shots:
        per_seed = []
        for s in range(config.seeds):
            idx = draw_shots(labels, num_classes, k, (config.seed, s))
            at = torch.from_numpy(idx if rows is None else np.searchsorted(rows, idx))
            w = ridge_fit(train_x[at.to(train_x.device)], torch.from_numpy(labels[idx]), num_classes, config.l2)
            logits = ridge_scores(w, test_x).float().cpu()  # [N, C]
            per_seed.append(score(classification_outcomes(logits, test_y), metric))
            if k == config.headline:
                headline_logits.append(logits)
        metrics[f"{k}shot"] = float(np.mean(per_seed))
        metrics[f"{k}shot_std"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
        metrics[f"{k}shot_seeds"] = per_seed
    metrics.update(
        {
            "score": metrics[f"{config.headline}shot"],
            "shots": float(config.headline),
            "seeds": float(config.seeds),
            "l2": float(config.l2),
            "num_classes": float(num_classes),
            "num_samples": float(len(test_y)),
        }
    )
    outcomes = classification_outcomes(torch.cat(headline_logits), test_y.cpu().repeat(config.seeds))
    return metrics, outcomes
