"""A deliberately naive re-statement of the 2021 reference forward pass, for equivalence tests.

Text: `nn.MultiheadAttention` on [L, B, D] with an explicit -inf upper-triangular mask over all 77
positions, pooled at `argmax` (as CLIP / SLIP). Vision: explicit softmax attention, timm layout.
It reads an openslip state dict, so equal outputs mean the key names carry the same meaning.
"""

import torch
import torch.nn.functional as F
from torch import nn


def reference_encode_text(sd: dict, tokens: torch.Tensor, heads: int) -> torch.Tensor:
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]  # [B, L, D]
    x = x.permute(1, 0, 2)  # LND, as the reference
    L, _, D = x.shape
    mask = torch.full((L, L), float("-inf"), dtype=x.dtype).triu_(1)
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in sd:
        p = f"transformer.resblocks.{i}."
        mha = nn.MultiheadAttention(D, heads, dtype=x.dtype)
        mha.load_state_dict(
            {
                "in_proj_weight": sd[p + "attn.in_proj_weight"],
                "in_proj_bias": sd[p + "attn.in_proj_bias"],
                "out_proj.weight": sd[p + "attn.out_proj.weight"],
                "out_proj.bias": sd[p + "attn.out_proj.bias"],
            }
        )
        h = F.layer_norm(x, (D,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (D,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        i += 1
    x = F.layer_norm(x.permute(1, 0, 2), (D,), sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ sd["text_projection"]


def reference_visual(sd: dict, images: torch.Tensor, heads: int, prefix: str = "visual.") -> torch.Tensor:
    g = lambda k: sd[prefix + k]  # noqa: E731
    w = g("patch_embed.proj.weight")
    x = F.conv2d(images, w, g("patch_embed.proj.bias"), stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([g("cls_token").expand(x.shape[0], -1, -1), x], 1) + g("pos_embed")
    B, N, D = x.shape
    i = 0
    while prefix + f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}."
        h = F.layer_norm(x, (D,), g(p + "norm1.weight"), g(p + "norm1.bias"), eps=1e-6)
        qkv = F.linear(h, g(p + "attn.qkv.weight"), g(p + "attn.qkv.bias")).reshape(B, N, 3, heads, D // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (D // heads) ** -0.5).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(B, N, D)
        x = x + F.linear(h, g(p + "attn.proj.weight"), g(p + "attn.proj.bias"))
        h = F.layer_norm(x, (D,), g(p + "norm2.weight"), g(p + "norm2.bias"), eps=1e-6)
        h = F.gelu(F.linear(h, g(p + "mlp.fc1.weight"), g(p + "mlp.fc1.bias")))
        x = x + F.linear(h, g(p + "mlp.fc2.weight"), g(p + "mlp.fc2.bias"))
        i += 1
    return F.layer_norm(x, (D,), g("norm.weight"), g("norm.bias"), eps=1e-6)[:, 0]
