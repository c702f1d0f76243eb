"""Linear classification on a frozen image tower (DESIGN §6), two protocols.

``logistic`` (CLIP paper, App. A.3): L2-regularised multinomial logistic regression (scikit-learn,
L-BFGS) on frozen features, standardised with the train split's mean and std; the inverse
regularisation ``C`` is chosen on a held-out part of the train split by a coarse log-grid followed
by a halving (binary-search-like) refinement, then the classifier is refit on the whole
train split with that ``C`` and scored on the test split.

``sgd`` (the SLIP reference's ``main_linear.py``, after MoCo v3): a linear head (weights ~ N(0, 0.01),
bias 0) on the frozen ViT in eval mode, trained with SGD (momentum 0.9, no weight decay) for 90 epochs with
a per-epoch cosine schedule, RandomResizedCrop + horizontal flip, global batch 256, learning rate
``base_lr x global_batch / 256``. The reference computed ``base_lr x int(per_device_batch / world_size) /
256``, i.e. divided by the world size twice (DESIGN §1 defect 3), so its rate fell with the square of the
GPU count; ``reference_lr_bug=True`` reproduces that for comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openslip import distributed
from openslip.errors import ConfigError
from openslip.eval.metrics import classification_metrics

# --- logistic regression on features ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LogisticConfig:
    """The C search of the logistic-regression probe."""

    grid: tuple[float, ...] = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)
    """Coarse log10(C) values tried first (CLIP swept 1e-6 .. 1e6)."""
    refine_steps: int = 3
    """Halvings of the step around the best coarse value (steps 1, 0.5, 0.25 in log10 units)."""
    max_iter: int = 500
    """L-BFGS iterations per fit (features are standardised and fits warm-started, so few are needed)."""
    holdout: float = 0.2
    """Fraction of the train split held out to choose C when no validation split is given."""

    def __post_init__(self) -> None:
        if not self.grid or self.refine_steps < 0 or self.max_iter < 1 or not 0 < self.holdout < 1:
            raise ConfigError("logistic probe: need a non-empty grid, refine_steps >= 0, max_iter >= 1, 0<holdout<1")


class _Fitter:
    """One scikit-learn model refit for each C, warm-started from the previous solution (the search moves
    C in small steps, so this cuts L-BFGS iterations several-fold)."""

    def __init__(self, max_iter: int) -> None:
        from sklearn.linear_model import LogisticRegression

        self.clf = LogisticRegression(max_iter=max_iter, solver="lbfgs", warm_start=True)

    def fit(self, x: np.ndarray, y: np.ndarray, c: float):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        self.clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(x, y)
        return self.clf


def _scores(clf, x: np.ndarray, num_classes: int) -> torch.Tensor:
    """[N, num_classes] class log-probabilities; classes absent from the fit get -inf."""
    out = torch.full((x.shape[0], num_classes), float("-inf"), dtype=torch.float64)
    out[:, torch.as_tensor(clf.classes_)] = torch.as_tensor(clf.predict_log_proba(x))
    return out


def search_c(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    num_classes: int,
    metric: str = "top1",
    config: LogisticConfig | None = None,
) -> tuple[float, float, list[tuple[float, float]]]:
    """(best C, its held-out score, every (C, score) tried) by coarse grid + halving refinement."""
    config = config or LogisticConfig()
    tried: dict[float, float] = {}
    fitter = _Fitter(config.max_iter)

    def score(log_c: float) -> float:
        log_c = round(log_c, 6)
        if log_c not in tried:
            clf = fitter.fit(train_x, train_y, 10.0**log_c)
            tried[log_c] = classification_metrics(_scores(clf, val_x, num_classes), torch.as_tensor(val_y), metric)[
                "score"
            ]
        return tried[log_c]

    # Ties go to the smaller C (stronger regularisation).
    best = max(config.grid, key=lambda c: (score(c), -c))
    step = 1.0
    for _ in range(config.refine_steps):
        best = max((best - step, best, best + step), key=lambda c: (score(c), -c))
        step /= 2
    log = sorted((10.0**c, s) for c, s in tried.items())
    return 10.0**best, tried[round(best, 6)], log


def logistic_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    num_classes: int,
    metric: str = "top1",
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    config: LogisticConfig | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], torch.Tensor]:
    """Fit the probe; returns (test metrics with ``C`` and ``val_score``, test scores [N, C]).

    Without ``val_x`` a ``config.holdout`` fraction of the train split (random, seeded) chooses C.
    """
    from openslip.eval.datasets import split_indices

    config = config or LogisticConfig()
    # Standardise with the train statistics: L-BFGS converges far faster, and C is searched anyway.
    mean, std = train_x.double().mean(0), train_x.double().std(0).clamp_min(1e-6)
    tx, ty = ((train_x.double() - mean) / std).numpy(), train_y.numpy()
    test_x = (test_x.double() - mean) / std
    if val_x is not None:
        val_x = (val_x.double() - mean) / std
    if val_x is None:
        fit_idx, hold_idx = split_indices(len(ty), config.holdout, seed)
        sx, sy, vx, vy = tx[fit_idx], ty[fit_idx], tx[hold_idx], ty[hold_idx]
    else:
        sx, sy, vx, vy = tx, ty, val_x.double().numpy(), val_y.numpy()  # type: ignore[union-attr]
    c, val_score, log = search_c(sx, sy, vx, vy, num_classes=num_classes, metric=metric, config=config)
    clf = _Fitter(config.max_iter).fit(tx, ty, c)
    scores = _scores(clf, test_x.double().numpy(), num_classes)
    out = classification_metrics(scores, test_y, metric)
    out.update({"C": c, "val_score": val_score, "num_train": float(len(ty)), "num_c_tried": float(len(log))})
    return out, scores


# --- the reference's SGD protocol ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SGDProbeConfig:
    """The SGD linear-probe recipe of the SLIP reference (main_linear.py)."""

    epochs: int = 90
    """Training epochs over the train split."""
    batch_size: int = 256
    """Global batch size (split evenly over ranks)."""
    base_lr: float = 0.1
    """Learning rate per 256 images: lr = base_lr x global_batch / 256."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 0.0
    """Weight decay (none in the reference)."""
    reference_lr_bug: bool = False
    """Reproduce the reference's rate, divided by the world size once more (DESIGN §1 defect 3)."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop area range of the training augmentation."""
    seed: int = 0
    """Seeds the head init and the data order."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.base_lr <= 0:
            raise ConfigError("sgd probe: epochs, batch_size and base_lr must be positive")


def sgd_learning_rate(cfg: SGDProbeConfig, world_size: int) -> float:
    """The peak learning rate: base_lr x global_batch / 256 (or the reference's, with the bug)."""
    if cfg.reference_lr_bug:
        # main_linear.py: init_lr = lr * int(per_device_batch / world_size) / 256, per_device = global / W.
        return cfg.base_lr * int(cfg.batch_size // world_size / world_size) / 256
    return cfg.base_lr * cfg.batch_size / 256


def epoch_shard(n: int, epoch: int, seed: int, rank: int, world: int) -> np.ndarray:
    """This rank's sample order for one epoch: one seeded permutation, padded by wrapping to a multiple of
    the world size (so every rank takes the same number of steps), dealt round-robin."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    total = math.ceil(n / world) * world
    perm = np.concatenate([perm, perm[: total - n]]) if total > n else perm
    return perm[rank::world]


def epoch_loader(
    dataset: torch.utils.data.Dataset, epoch: int, seed: int, rank: int, world: int, batch_size: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """This rank's batches of one training epoch (the order of `epoch_shard`)."""
    order = epoch_shard(len(dataset), epoch, seed, rank, world)  # type: ignore[arg-type]
    subset = torch.utils.data.Subset(dataset, order.tolist())
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def sgd_probe(
    model: nn.Module,
    train_set: torch.utils.data.Dataset,
    test_set: torch.utils.data.Dataset,
    *,
    num_classes: int,
    metric: str = "top1",
    config: SGDProbeConfig | None = None,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    log: bool = True,
) -> dict[str, float]:
    """Train a linear head on the frozen ``model.visual`` (train_set yields augmented images), score test_set.

    Data-parallel: each rank runs its shard of every epoch; head gradients are averaged over ranks.
    """
    from openslip.eval.features import extract_features

    cfg = config or SGDProbeConfig()
    world, rank = distributed.world_size(), distributed.rank()
    if cfg.batch_size % world:
        raise ConfigError(f"sgd probe: batch size {cfg.batch_size} is not divisible by {world} processes")
    per_rank = cfg.batch_size // world
    device = torch.device(device)
    backbone = model.visual.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = nn.Linear(backbone.num_features, num_classes).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    lr = sgd_learning_rate(cfg, world)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:  # per-epoch cosine, as the reference's adjust_learning_rate
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
        loader = epoch_loader(train_set, epoch, cfg.seed, rank, world, per_rank, num_workers)
        total, count = 0.0, 0
        for images, labels in loader:
            with torch.no_grad():
                feats = backbone(images.to(device))
            loss = F.cross_entropy(head(feats), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(head)
            opt.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
        if log and distributed.is_main() and (epoch + 1 == cfg.epochs or (epoch + 1) % max(cfg.epochs // 10, 1) == 0):
            print(f"  sgd probe epoch {epoch + 1}/{cfg.epochs}: loss {total / max(count, 1):.4f}", flush=True)
    with torch.no_grad():
        logits, labels = extract_features(
            lambda x: head(backbone(x)), test_set, batch_size=per_rank, device=device, normalize=False, desc="test"
        )
    out = classification_metrics(logits, labels, metric)
    out.update({"lr": lr, "epochs": float(cfg.epochs), "batch_size": float(cfg.batch_size)})
    return out
