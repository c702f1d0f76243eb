"""Small building blocks shared by the towers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [B, H, N, d] (causal for the text tower), through
    `F.scaled_dot_product_attention`.

    On a CPU in a bf16 step the kernel runs in fp32: torch's bf16 CPU flash kernel is slower than its fp32 one at
    the head sizes of the paper's models (fwd + bwd, 2 cores with AMX: 114 -> 64 ms per ViT-S/16 layer at 48 x 12
    x 197 x 32, 15.7 -> 5.6 ms per text layer at 16 x 8 x 77 x 64 causal, ViT-B/16's 64-wide heads unchanged,
    docs/PERFORMANCE.md), and fp32 is the more exact of the two. Same math and FLOPs; the output is cast back."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):  # autocast would send SDPA back to bf16
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        return out.to(torch.bfloat16)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation of the original CLIP text tower (Radford et al. 2021)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample (used when finetuning, BEiT recipe)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def activation(name: str) -> nn.Module:
    """The MLP activation named in a tower config ("gelu" or "quick_gelu")."""
    return QuickGELU() if name == "quick_gelu" else nn.GELU()
