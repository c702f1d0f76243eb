"""OpenAI / open_clip-layout state dicts with random values, and a naive re-statement of OpenAI CLIP's forward over
such a dict (openai/CLIP model.py: ln_pre, CLS + ln_post @ proj; causal text tower pooled at the argmax token)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def clip_state_dict(
    *,
    width: int = 64,
    layers: int = 2,
    patch: int = 16,
    image_size: int = 32,
    text_width: int = 64,
    text_layers: int = 2,
    context: int = 12,
    vocab: int = 100,
    embed: int = 48,
    openai: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random weights under CLIP's names; `openai` adds the shape hints OpenAI's released files carry."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, std: float = 0.2) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype)

    def ln(prefix: str, w: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + r(w), f"{prefix}.bias": r(w)}

    def blocks(prefix: str, w: int, n: int) -> dict[str, torch.Tensor]:
        sd: dict[str, torch.Tensor] = {}
        for i in range(n):
            b = f"{prefix}.resblocks.{i}"
            sd |= ln(f"{b}.ln_1", w) | ln(f"{b}.ln_2", w)
            sd[f"{b}.attn.in_proj_weight"], sd[f"{b}.attn.in_proj_bias"] = r(3 * w, w), r(3 * w)
            sd[f"{b}.attn.out_proj.weight"], sd[f"{b}.attn.out_proj.bias"] = r(w, w), r(w)
            sd[f"{b}.mlp.c_fc.weight"], sd[f"{b}.mlp.c_fc.bias"] = r(4 * w, w), r(4 * w)
            sd[f"{b}.mlp.c_proj.weight"], sd[f"{b}.mlp.c_proj.bias"] = r(w, 4 * w), r(w)
        return sd

    grid = image_size // patch
    sd = {
        "visual.conv1.weight": r(width, 3, patch, patch, std=0.05),
        "visual.class_embedding": r(width),
        "visual.positional_embedding": r(grid * grid + 1, width),
        **ln("visual.ln_pre", width),
        **blocks("visual.transformer", width, layers),
        **ln("visual.ln_post", width),
        "visual.proj": r(width, embed),
        "token_embedding.weight": r(vocab, text_width),
        "positional_embedding": r(context, text_width),
        **blocks("transformer", text_width, text_layers),
        **ln("ln_final", text_width),
        "text_projection": r(text_width, embed),
        "logit_scale": torch.tensor(math.log(1 / 0.07), dtype=dtype),
    }
    if openai:
        sd |= {
            "input_resolution": torch.tensor(image_size),
            "context_length": torch.tensor(context),
            "vocab_size": torch.tensor(vocab),
        }
    return sd


def _act(x: torch.Tensor, quick: bool) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x) if quick else F.gelu(x)


def _ln(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-5)


def _transformer(
    sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, heads: int, quick: bool, causal: bool
) -> torch.Tensor:
    """x [L, N, D] (sequence first, as CLIP feeds nn.MultiheadAttention); attention written out by hand."""
    L, N, D = x.shape
    i = 0
    while f"{prefix}.resblocks.{i}.ln_1.weight" in sd:
        b = f"{prefix}.resblocks.{i}"
        h = _ln(sd, f"{b}.ln_1", x)
        q, k, v = (h @ sd[f"{b}.attn.in_proj_weight"].T + sd[f"{b}.attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(L, N * heads, D // heads).transpose(0, 1) for t in (q, k, v))  # [N*H, L, D/H]
        scores = q @ k.transpose(1, 2) / math.sqrt(D // heads)
        if causal:
            scores = scores + torch.full((L, L), float("-inf"), dtype=x.dtype).triu(1)
        a = (scores.softmax(-1) @ v).transpose(0, 1).reshape(L, N, D)
        x = x + a @ sd[f"{b}.attn.out_proj.weight"].T + sd[f"{b}.attn.out_proj.bias"]
        h = _ln(sd, f"{b}.ln_2", x)
        h = _act(h @ sd[f"{b}.mlp.c_fc.weight"].T + sd[f"{b}.mlp.c_fc.bias"], quick)
        x = x + h @ sd[f"{b}.mlp.c_proj.weight"].T + sd[f"{b}.mlp.c_proj.bias"]
        i += 1
    return x


def clip_encode_image(sd: dict[str, torch.Tensor], image: torch.Tensor, heads: int, quick: bool) -> torch.Tensor:
    x = F.conv2d(image, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])  # [N, W, g, g]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [N, g*g, W]
    cls = sd["visual.class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _ln(sd, "visual.ln_pre", x)
    x = _transformer(sd, "visual.transformer", x.permute(1, 0, 2), heads, quick, causal=False).permute(1, 0, 2)
    return _ln(sd, "visual.ln_post", x[:, 0, :]) @ sd["visual.proj"]


def clip_encode_text(sd: dict[str, torch.Tensor], text: torch.Tensor, heads: int, quick: bool) -> torch.Tensor:
    x = sd["token_embedding.weight"][text] + sd["positional_embedding"]
    x = _transformer(sd, "transformer", x.permute(1, 0, 2), heads, quick, causal=True).permute(1, 0, 2)
    x = _ln(sd, "ln_final", x)
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ sd["text_projection"]


def tokens(n: int, context: int, vocab: int, seed: int = 1) -> torch.Tensor:
    """Token rows ending in the vocabulary's largest id (the EOT) at varied lengths, zero-padded."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        length = 2 + i % (context - 2)
        out[i, :length] = torch.randint(1, vocab - 1, (length,), generator=g)
        out[i, length] = vocab - 1
    return out
