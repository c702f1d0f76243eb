"""Gradient accumulation that keeps the contrastive batch exact (the GradCache idea, Gao et al. 2021).

Naive accumulation computes the loss per micro-batch, which shrinks the set of negatives and changes
the objective. Here:
  1. every micro-batch goes through the per-sample encoders without a graph (`forward_features`);
  2. the heads and the loss run once over the cached features of the whole batch, with a graph, and
     the backward pass gives the gradient of the loss with respect to each cached feature (and
     directly to the head / projection / temperature parameters);
  3. each micro-batch is encoded again with a graph and back-propagated with its slice of that
     gradient, which adds exactly its share of the encoder gradients.
The result equals one step on the whole batch (the encoders have no batch statistics; the BatchNorm
head sees the whole batch, as in the reference).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from openslip.models.slip import SLIP

FEATURE_INPUTS = ("image", "text", "view1", "view2", "local")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (autocast may give bf16 / fp16); float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def split_batch(inputs: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    chunks = {k: v.chunk(parts) for k, v in inputs.items()}
    return [{k: c[i] for k, c in chunks.items()} for i in range(parts)]


def accumulated_backward(
    model: SLIP,
    inputs: dict[str, torch.Tensor],
    loss_fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    parts: int,
    *,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    scale: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
) -> dict[str, torch.Tensor]:
    """Backward of `loss_fn(model(**inputs))` over `parts` micro-batches; returns the loss dict.

    `model` is the bare module (not DDP-wrapped): the caller averages gradients over ranks afterwards.
    `scale` maps the loss to what is back-propagated (fp16 loss scaling).
    """
    micro = split_batch({k: v for k, v in inputs.items() if k in FEATURE_INPUTS}, parts)
    # 1. Features of every micro-batch, no graph.
    with torch.no_grad(), autocast():
        cached = [model.forward_features(**m) for m in micro]
    feats = {k: torch.cat([c[k] for c in cached]).detach().requires_grad_() for k in cached[0]}
    # 2. Heads + loss over the whole batch; gradients reach the head parameters and the cached features.
    with autocast():
        losses = loss_fn(model.forward_heads(feats))
    scale(losses["loss"]).backward()
    grads = {k: f.grad.chunk(parts) for k, f in feats.items()}
    # 3. Re-encode each micro-batch with a graph and push its slice of the feature gradient through.
    for i, m in enumerate(micro):
        with autocast():
            out = model.forward_features(**m)
        surrogate = sum((_upcast(out[k]) * _upcast(grads[k][i])).sum() for k in out)
        surrogate.backward()
    return losses
