"""End-to-end finetuning of the image tower, BEiT-style (Bao et al. 2022, App. D; the SLIP paper §4.3).

The pre-trained ViT gets a fresh linear head (weights trunc-normal 0.02 x 0.001, BEiT's ``init_scale``)
and drop-path, and is trained with AdamW, per-step linear warm-up + cosine decay, layer-wise learning-rate
decay (block ``i`` of ``L`` gets ``decay^(L + 1 - (i + 1))`` of the rate, the patch/position embeddings
``decay^(L + 1)``, the final norm and head the full rate; groups come from ``visual.group_matcher()``),
no weight decay on biases / norms / ``no_weight_decay()`` names, Mixup / CutMix (switching 50/50 per
batch) and label smoothing. The SLIP paper's recipe per size is in ``PRESETS``; the learning rate scales
linearly with the global batch (4e-3 at 1024). Omitted from BEiT's recipe: RandAugment and random erasing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from openslip import distributed
from openslip.errors import ConfigError
from openslip.eval.metrics import classification_metrics
from openslip.models.vision import VisionTransformer


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Finetuning hyper-parameters (defaults: the paper's ViT-B/16 recipe)."""

    epochs: int = 100
    """Training epochs."""
    warmup_epochs: float = 20
    """Linear warm-up from 0, in epochs (per-step schedule)."""
    batch_size: int = 1024
    """Global batch size, split evenly over ranks."""
    base_lr: float = 4e-3
    """Peak learning rate at a global batch of 1024 (scaled linearly with the batch)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine."""
    weight_decay: float = 0.05
    """AdamW weight decay (not on biases, norms, position embedding, CLS token)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    layer_decay: float = 0.65
    """Layer-wise lr decay factor per block from the top."""
    drop_path: float = 0.1
    """Stochastic depth rate of the last block (linearly increasing with depth)."""
    mixup_alpha: float = 0.8
    """Mixup Beta(alpha, alpha); 0 disables."""
    cutmix_alpha: float = 1.0
    """CutMix Beta(alpha, alpha); 0 disables."""
    label_smoothing: float = 0.1
    """Label smoothing of the (mixed) one-hot targets."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop area range."""
    seed: int = 0
    """Seeds the head init, the data order and the mixing."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.base_lr <= 0 or self.warmup_epochs < 0:
            raise ConfigError("finetune: epochs, batch_size, base_lr must be positive, warmup_epochs >= 0")
        if not 0 < self.layer_decay <= 1 or not 0 <= self.drop_path < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("finetune: need 0 < layer_decay <= 1, 0 <= drop_path < 1, 0 <= label_smoothing < 1")

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 1024


# The SLIP paper's finetuning recipes (after BEiT); "demo" is a CPU-sized run on the demo world.
PRESETS: dict[str, FinetuneConfig] = {
    "vit_s16": FinetuneConfig(epochs=100, warmup_epochs=20, layer_decay=0.65, drop_path=0.0),
    "vit_b16": FinetuneConfig(epochs=100, warmup_epochs=20, layer_decay=0.65, drop_path=0.1),
    "vit_l16": FinetuneConfig(epochs=50, warmup_epochs=5, layer_decay=0.75, drop_path=0.1),
    "demo": FinetuneConfig(
        epochs=10, warmup_epochs=1, batch_size=64, base_lr=4e-3, layer_decay=0.75, drop_path=0.0, mixup_alpha=0.2
    ),
}


def preset_for(model_name: str) -> str:
    """The preset of a model name: its ViT size (vit_s16 / vit_b16 / vit_l16), else 'demo' for tiny models."""
    for size in ("vit_s16", "vit_b16", "vit_l16"):
        if model_name.lower().endswith(size) or model_name.upper().endswith(size.upper().replace("_", "")):
            return size
    return "demo"


def build_classifier(model: Any, num_classes: int, drop_path: float, seed: int = 0) -> VisionTransformer:
    """A copy of ``model.visual`` with drop-path and a fresh ``num_classes`` head (BEiT's head init)."""
    src = model.visual
    vit = VisionTransformer(src.cfg, num_classes=num_classes, drop_path_rate=drop_path)
    missing, unexpected = vit.load_state_dict(src.state_dict(), strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise RuntimeError(f"backbone copy mismatch: missing {missing}, unexpected {unexpected}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vit.head.weight.copy_(torch.randn(vit.head.weight.shape, generator=gen).clamp_(-2, 2) * 0.02 * 1e-3)
        vit.head.bias.zero_()
    return vit.to(next(src.parameters()).device)


def layer_id(name: str, vit: VisionTransformer) -> int:
    """0 for the stem, i + 1 for block i, L + 1 for the final norm and the head (from ``group_matcher``)."""
    groups = vit.group_matcher()
    if re.match(str(groups["stem"]), name):
        return 0
    m = re.match(str(groups["blocks"]), name)
    if m:
        return int(m.group(1)) + 1
    return len(vit.blocks) + 1


def param_groups(vit: VisionTransformer, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups with ``lr_scale`` = layer_decay^(L + 1 - layer_id) and weight decay only on matrices."""
    skip = vit.no_weight_decay()
    num = len(vit.blocks) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in vit.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or name.endswith(".bias") or name in skip
        lid = layer_id(name, vit)
        g = groups.setdefault(
            (lid, no_decay),
            {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": layer_decay ** (num - lid)},
        )
        g["params"].append(p)
    return list(groups.values())


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then cosine to ``floor``."""
    if step < warmup:
        return peak * step / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(t, 1.0)))


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((len(labels), num_classes), off, device=labels.device).scatter_(
        1, labels.view(-1, 1), 1.0 - smoothing + off
    )


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: FinetuneConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (chosen 50/50 when both are on) with the batch reversed as partner; soft targets."""
    target = smooth_one_hot(labels, num_classes, cfg.label_smoothing)
    use_mixup, use_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    if not (use_mixup or use_cutmix):
        return images, target
    cutmix = use_cutmix and (not use_mixup or rng.random() < 0.5)
    lam = float(rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha) if cutmix else rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
    partner = images.flip(0)
    if cutmix:
        h, w = images.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        images = images.clone()
        images[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    else:
        images = images * lam + partner * (1 - lam)
    return images, target * lam + target.flip(0) * (1 - lam)


def finetune(
    model: Any,
    train_set: torch.utils.data.Dataset,
    test_set: torch.utils.data.Dataset,
    *,
    num_classes: int,
    metric: str = "top1",
    config: FinetuneConfig | None = None,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    eval_every: int = 0,
    log: bool = True,
) -> tuple[dict[str, float], VisionTransformer]:
    """Finetune ``model.visual`` on train_set (augmented images), score test_set; returns (metrics, classifier).

    Data-parallel over ranks: each rank trains on its shard of every epoch and gradients are averaged.
    """
    from openslip.eval.features import extract_features
    from openslip.eval.linear import epoch_loader

    cfg = config or FinetuneConfig()
    world, rank = distributed.world_size(), distributed.rank()
    if cfg.batch_size % world:
        raise ConfigError(f"finetune: batch size {cfg.batch_size} is not divisible by {world} processes")
    per_rank = cfg.batch_size // world
    device = torch.device(device)
    torch.manual_seed(cfg.seed + rank)  # drop-path masks differ per rank
    vit = build_classifier(model, num_classes, cfg.drop_path, cfg.seed).to(device)
    groups = param_groups(vit, cfg.weight_decay, cfg.layer_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    n = len(train_set)  # type: ignore[arg-type]
    steps_per_epoch = math.ceil(math.ceil(n / world) / per_rank)
    total, warmup = cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch))
    rng = np.random.default_rng([cfg.seed, rank])
    history: dict[str, float] = {}

    def evaluate() -> dict[str, float]:
        vit.eval()
        logits, labels = extract_features(vit, test_set, batch_size=per_rank, device=device, normalize=False)
        vit.train()
        return classification_metrics(logits, labels, metric)

    step = 0
    vit.train()
    for epoch in range(cfg.epochs):
        loader = epoch_loader(train_set, epoch, cfg.seed, rank, world, per_rank, num_workers)
        seen, loss_sum = 0, 0.0
        for images, labels in loader:
            lr = lr_at(step, total, warmup, cfg.lr, cfg.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            x, target = mix_batch(images.to(device), labels.to(device), num_classes, cfg, rng)
            loss = torch.sum(-target * F.log_softmax(vit(x), dim=-1), dim=-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(vit)
            opt.step()
            step += 1
            seen, loss_sum = seen + len(labels), loss_sum + loss.item() * len(labels)
        if eval_every and (epoch + 1) % eval_every == 0 and epoch + 1 < cfg.epochs:
            history[f"epoch{epoch + 1}_score"] = evaluate()["score"]
        if log and distributed.is_main():
            print(
                f"  finetune epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / max(seen, 1):.4f}, lr {lr:.2e}",
                flush=True,
            )
    out = evaluate()
    out.update({"lr": cfg.lr, "epochs": float(cfg.epochs), "batch_size": float(cfg.batch_size), **history})
    return out, vit.eval()


def config_from_preset(name: str, **overrides: Any) -> FinetuneConfig:
    """A preset with some fields replaced (``None`` values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown finetune preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
