"""Vision Transformer image tower with timm's parameter names, so SLIP checkpoints load 1:1.

Names follow timm's `VisionTransformer` (`cls_token`, `pos_embed`, `patch_embed.proj`,
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`) as used by the SLIP reference
with `num_classes=0`. The output is the final-LayerNorm'd CLS token. `VisionConfig.ln_pre` adds timm's
`norm_pre` (CLIP's `ln_pre`) so OpenAI / open_clip ViTs map onto this module exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from openslip.models.config import VisionConfig
from openslip.models.layers import DropPath, activation, attention


def kept_patches(num_patches: int, patch_dropout: float) -> int:
    """Patch tokens left by patch dropout (FLIP, Li et al. 2023): at least one."""
    return max(1, int(num_patches * (1.0 - patch_dropout)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, D, H/p, W/p]
        return x.flatten(2).transpose(1, 2)  # [B, N, D]


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, D/H]
        x = attention(q, k, v)  # [B, H, N, D/H]
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(
        self, width: int, heads: int, mlp_ratio: float, drop_path: float = 0.0, act: str = "gelu", eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), act)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT backbone with the timm feature API (`forward_features`, `forward_head`, `no_weight_decay`...)."""

    def __init__(self, cfg: VisionConfig, *, num_classes: int = 0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_features = self.embed_dim = cfg.width
        self.patch_size = cfg.patch_size
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width, cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, cfg.width))
        rates = [drop_path_rate * i / max(cfg.layers - 1, 1) for i in range(cfg.layers)]  # grows with depth
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.ln_pre else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, r, cfg.act, cfg.norm_eps) for r in rates)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.head: nn.Module = nn.Linear(cfg.width, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        # FLIP's patch dropout (Li et al. 2023): the fraction of patch tokens dropped at random per image in
        # training mode. A training setting (`train.patch_dropout`), not part of the architecture: off by default.
        self.patch_dropout = 0.0
        self.init_weights()

    def init_weights(self) -> None:
        # timm's ViT init: truncated normal (std .02) for the embeddings and every Linear, zero biases.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # --- timm-style feature API -------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """Parameter groups for layer-wise lr decay: the stem, then one group per block."""
        return {
            "stem": r"^cls_token|^pos_embed|^patch_embed|^norm_pre",
            "blocks": r"^blocks\.(\d+)" if not coarse else r"^blocks",
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _pos_embed(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        pos = self.pos_embed
        n = pos.shape[1] - 1
        if grid_hw[0] * grid_hw[1] != n:  # another input size: resample the position grid bicubically
            side = int(math.sqrt(n))
            patch_pos = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            patch_pos = F.interpolate(patch_pos, size=grid_hw, mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :1], patch_pos.flatten(2).transpose(1, 2)], dim=1)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + pos  # [B, 1 + N, D]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images -> [B, 1 + N, D] normalised tokens (CLS first)."""
        grid_hw = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        x = self._pos_embed(self.patch_embed(x), grid_hw)  # [B, 1 + N, D]
        if self.training and self.patch_dropout > 0:
            x = self._drop_patches(x)  # [B, 1 + kept, D]
        x = self.norm_pre(x)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Keep the CLS token and a random subset of each image's patch tokens (after the position embedding, so
        the kept tokens keep their positions), as FLIP: the blocks then run on fewer tokens."""
        B, T, D = x.shape
        keep = kept_patches(T - 1, self.patch_dropout)
        order = torch.rand(B, T - 1, device=x.device).argsort(dim=1)[:, :keep]  # [B, keep]
        patches = x[:, 1:].gather(1, order.unsqueeze(-1).expand(-1, -1, D))
        return torch.cat([x[:, :1], patches], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]  # CLS token, [B, D]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
