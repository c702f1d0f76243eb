"""Linear classification on a frozen image tower, two protocols.

``logistic`` (CLIP paper, App. A.3): L2-regularised multinomial logistic regression (scikit-learn's
objective, solved with torch's L-BFGS on the features' device) on frozen features, standardised with the
train split's mean and std; the inverse regularisation ``C`` is chosen on a held-out part of the train
split by a coarse log-grid followed by a halving (binary-search-like) refinement, then the classifier is
refit on the whole train split with that ``C`` and scored on the test split. It lives in
``openslip.eval.logistic``.

``sgd`` (the SLIP reference's ``main_linear.py``, after MoCo v3): a linear head (weights ~ N(0, 0.01),
bias 0) on the frozen ViT in eval mode, trained with SGD (momentum 0.9, no weight decay) for 90 epochs with
a per-epoch cosine schedule, RandomResizedCrop + horizontal flip, global batch 1024 (the reference's 128 per
GPU x 8), learning rate ``base_lr x global_batch / 256``. The test set (``Resize(256)``, ``CenterCrop(224)``,
``openslip.eval.preprocess``) is scored every ``eval_every`` epochs (the reference's ``--eval-freq`` 10) and
after the last; the best score is reported, as the reference's ``best_acc1`` (``report="final"``: the last).
The reference computed ``base_lr x int(per_device_batch / world_size) /
256``, i.e. divided by the world size twice, so its rate fell with the square of the GPU count: on the paper's
8 GPUs (128 images each) 0.1 x int(128 / 8) / 256 = 0.00625, not 0.4. ``reference_lr_bug=True`` reproduces
that rate, for the world size ``reference_world_size`` (the paper's: 8) on any number of processes, or for this
run's when it is None.
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
from openslip.eval.best_of import best_and_final, check_report
from openslip.eval.features import extract_features
from openslip.eval.metrics import classification_metrics
from openslip.optim import warmup_cosine
from openslip.step import OptimStep, check_finite

# --- the reference's SGD protocol ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SGDProbeConfig:
    """The SGD linear-probe recipe of the SLIP reference (main_linear.py)."""

    epochs: int = 90
    """Training epochs over the train split."""
    batch_size: int = 1024
    """Global batch size (split evenly over ranks): the reference's 128 per GPU x 8 GPUs."""
    base_lr: float = 0.1
    """Learning rate per 256 images: lr = base_lr x global_batch / 256."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 0.0
    """Weight decay (none in the reference)."""
    reference_lr_bug: bool = False
    """Reproduce the reference's rate, divided by the world size once more."""
    reference_world_size: int | None = None
    """With ``reference_lr_bug``: the process count of the reference run whose rate is reproduced (the paper's
    runs: 8), whatever this run's; None: this run's."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop area range of the training augmentation."""
    seed: int = 0
    """Seeds the head init and the data order."""
    eval_every: int = 10
    """Score the test set every this many epochs (and after the last): the reference's ``--eval-freq``."""
    report: str = "best"
    """``best``: the best of the evaluations (the reference's ``best_acc1``); ``final``: the last epoch's."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.base_lr <= 0 or self.eval_every < 1:
            raise ConfigError("sgd probe: epochs, batch_size, base_lr and eval_every must be positive")
        check_report(self.report)
        if self.reference_world_size is not None and self.reference_world_size < 1:
            raise ConfigError(f"sgd probe: reference world size {self.reference_world_size} must be positive")


def sgd_learning_rate(cfg: SGDProbeConfig, world_size: int) -> float:
    """The peak learning rate: base_lr x global_batch / 256 (or the reference's, with the bug)."""
    if cfg.reference_lr_bug:
        # main_linear.py: init_lr = lr * int(per_device_batch / world_size) / 256, per_device = global / W; W is the
        # reference run's process count, which need not be this run's (the paper's rate on one process).
        w = cfg.reference_world_size or world_size
        if cfg.batch_size // w < w:  # int(per_device / w) = 0: the reference would have trained at lr 0
            raise ConfigError(
                f"sgd probe: the reference's lr formula gives 0 for a global batch of {cfg.batch_size} on {w} "
                f"processes (int({cfg.batch_size // w} / {w}) = 0); use a global batch of at least {w * w}"
            )
        return cfg.base_lr * int(cfg.batch_size // w / w) / 256
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

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            logits, labels = extract_features(
                lambda x: head(backbone(x)), test_set, batch_size=per_rank, device=device, normalize=False, desc="test"
            )
        return classification_metrics(logits, labels, metric)

    evaluations: dict[int, dict[str, float]] = {}
    opt = OptimStep(
        torch.optim.SGD(head.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
        schedule=lambda epoch: warmup_cosine(epoch, cfg.epochs, warmup=0, peak=lr, floor=0.0),
        device_type=device.type,
    )
    step = 0
    for epoch in range(cfg.epochs):
        opt.set_lr(epoch)  # per-epoch cosine, as the reference's adjust_learning_rate
        loader = epoch_loader(train_set, epoch, cfg.seed, rank, world, per_rank, num_workers)
        total, count = 0.0, 0
        for images, labels in loader:
            with torch.no_grad():
                feats = backbone(images.to(device))
            loss = F.cross_entropy(head(feats), labels.to(device))
            best = max(evaluations, key=lambda e: evaluations[e]["score"], default=None)
            last_good = f"the best evaluation so far was after epoch {best}" if best else "nothing was evaluated yet"
            check_finite(loss, what="SGD linear probe", step=step, detail="; " + last_good)
            step += 1
            opt.backward(loss)
            distributed.average_gradients(head)
            opt.update(head.parameters())
            total, count = total + loss.item() * len(labels), count + len(labels)
        if log and distributed.is_main() and (epoch + 1 == cfg.epochs or (epoch + 1) % max(cfg.epochs // 10, 1) == 0):
            print(f"  sgd probe epoch {epoch + 1}/{cfg.epochs}: loss {total / max(count, 1):.4f}", flush=True)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            evaluations[epoch + 1] = evaluate()
    out = best_and_final(evaluations, cfg.report)
    out.update({"lr": lr, "epochs": float(cfg.epochs), "batch_size": float(cfg.batch_size)})
    return out
