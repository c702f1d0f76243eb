"""The 2021 way of running a SLIP step, for `openslip bench train --baseline`.

A straightforward implementation of what the reference code did, computed from the parameters of an
openslip `SLIP` module so both paths train the same weights in the same run
(docs/DESIGN.md, 'Measuring performance'):

- three separate ViT passes (CLIP view, then each SimCLR view), the text tower on all 77 tokens;
- unfused attention: explicit softmax(q k^T / sqrt(d)) v, with an additive -inf mask for the text
  tower (`nn.MultiheadAttention` of 2021);
- AdamW looping over the parameters one tensor at a time (`foreach=False`);
- the candidate's precision: both run under the same autocast, so the ratio measures the implementation;
- with data: the per-sample PIL augmentation of `openslip.data.augment.pil_reference.pil_transform` in the
  loader workers.

The losses are openslip's (`SLIPLoss`), which on one process are the reference's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image

from openslip.data.augment.pil_reference import pil_transform
from openslip.data.augment.views import SLIPTransform
from openslip.models import SLIP
from openslip.models.slip import full_context
from openslip.optim import param_groups


def _attention(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, heads: int, mask: torch.Tensor | None):
    B, N, D = x.shape
    qkv = F.linear(x, w_qkv, b_qkv).reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, D/H]
    attn = (q * (1.0 / math.sqrt(D // heads))) @ k.transpose(-2, -1)  # [B, H, N, N]
    if mask is not None:
        attn = attn + mask
    attn = attn.softmax(dim=-1)
    return (attn @ v).transpose(1, 2).reshape(B, N, D)


def reference_visual(model: SLIP, x: torch.Tensor) -> torch.Tensor:
    """The ViT's CLS feature [B, width] with unfused attention (timm 0.4 `VisionTransformer`)."""
    vit = model.visual
    x = vit.patch_embed(x)  # [B, N, D]
    grid = (int(math.isqrt(x.shape[1])),) * 2
    x = vit._pos_embed(x, grid)
    for blk in vit.blocks:
        a = blk.attn
        y = _attention(blk.norm1(x), a.qkv.weight, a.qkv.bias, a.heads, None)
        x = x + a.proj(y)
        x = x + blk.mlp(blk.norm2(x))
    return vit.norm(x)[:, 0]


def reference_text(model: SLIP, text: torch.Tensor) -> torch.Tensor:
    """Text embedding [B, embed_dim] over the full context with an explicit causal -inf mask (CLIP 2021)."""
    text = full_context(text, model.positional_embedding.shape[0])  # the ids come trimmed (trim_tokens)
    L = text.shape[1]
    mask = torch.full((L, L), float("-inf"), device=text.device).triu_(1)
    x = model.token_embedding(text) + model.positional_embedding
    for blk in model.transformer.resblocks:
        a = blk.attn
        y = _attention(blk.ln_1(x), a.in_proj_weight, a.in_proj_bias, a.heads, mask)
        x = x + a.out_proj(y)
        x = x + blk.mlp(blk.ln_2(x))
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ model.text_projection


def reference_forward(
    model: SLIP,
    image: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    view1: torch.Tensor | None = None,
    view2: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """`model(...)`'s output dict computed the 2021 way: one ViT pass per view, unfused attention."""
    out: dict[str, torch.Tensor] = {}
    if image is not None:
        out["image_embed"] = reference_visual(model, image) @ model.image_projection
    if text is not None:
        out["text_embed"] = reference_text(model, text)
    for name, v in (("view1", view1), ("view2", view2)):
        if v is not None:
            out[f"{name}_embed"] = model.image_mlp(reference_visual(model, v))
    if model.has_text:
        out["logit_scale"] = model.logit_scale.exp()
    return out


def reference_optimizer(model: SLIP, lr: float, wd: float, betas: tuple[float, float], eps: float):
    """AdamW as in 2021: the same parameter groups, one tensor at a time."""
    return torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=betas, eps=eps, foreach=False, fused=False)


class PILSLIPTransform:
    """The three views of one image with the per-sample PIL pipeline (loader-worker transform)."""

    def __init__(self, image_size: int) -> None:
        self._params = SLIPTransform(image_size)  # draws the parameters; PIL renders them

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        return pil_transform(self._params, image)
