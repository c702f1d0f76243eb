"""Optimizer parts shared by the training loops: parameter groups, the warm-up + cosine schedule and the CLIP
temperature clamp. `step.OptimStep` puts them together into one step; pre-training's AdamW and its schedule read
the config in `openslip.train.optimizer`."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

import torch
from torch import nn


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    no_decay_names: Collection[str] = (),
    layer_of: Callable[[str], int] | None = None,
    layer_decay: float = 1.0,
) -> list[dict]:
    """Parameter groups without weight decay for parameters with ndim < 2 or named `bias` (norms, biases,
    `logit_scale`) or listed in ``no_decay_names``, with ``weight_decay`` for the rest.

    Without ``layer_of``: the SLIP reference's two groups [decay, no decay] (checkpoints store this order).
    With it (finetuning, BEiT's layer-wise decay): one group per (layer, decay) with ``lr_scale`` =
    ``layer_decay ** (top - layer)``, ``top`` being the highest layer id, so the top layers get the full rate."""
    if layer_of is None:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or name.endswith("bias") or name in no_decay_names else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    named = [(name, p, layer_of(name)) for name, p in model.named_parameters() if p.requires_grad]
    top = max((layer for _, _, layer in named), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p, layer in named:
        skip = p.ndim < 2 or name.endswith("bias") or name in no_decay_names
        group = groups.setdefault(
            (layer, skip),
            {"params": [], "weight_decay": 0.0 if skip else weight_decay, "lr_scale": layer_decay ** (top - layer)},
        )
        group["params"].append(p)
    return list(groups.values())


def warmup_cosine(step: int, total: int, *, warmup: int, peak: float, floor: float, start: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup`` steps, then cosine to ``floor`` at ``total``."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


MAX_LOGIT_SCALE = math.log(100.0)  # CLIP: the temperature multiplier is clamped at 100


@torch.no_grad()
def clamp_logit_scale(model: nn.Module) -> None:
    """Clamp the learned log temperature to [0, ln 100] after every optimizer step (CLIP / SLIP).

    Not for a model trained with the sigmoid loss: SigLIP (Zhai et al., ICCV 2023) learns t = exp(t') without a
    clamp, and its bias, not the temperature, balances the many negatives; we follow the paper."""
    if getattr(model, "has_logit_bias", False):
        return
    scale = getattr(model, "logit_scale", None)
    if scale is not None:
        scale.clamp_(0, MAX_LOGIT_SCALE)
