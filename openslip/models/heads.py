"""The self-supervised heads on the image tower: SLIP's SimCLR projection MLP (§3.2: 3 layers, width 4096, output 256)
and the self-distillation head of DINO (Caron et al. 2021, §3.1 and appendix) used by `loss.ssl=distill`."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from openslip.models.config import DistillHeadConfig, HeadConfig


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm1d(dim)  # swapped for SyncBatchNorm by the trainer when world size > 1
    if kind == "ln":
        return nn.LayerNorm(dim)
    return nn.Identity()


class SimCLRHead(nn.Sequential):
    """layer1 -> bn1 -> relu1 -> layer2 -> bn2 -> relu2 -> layer3.

    The slot names are the reference's (`image_mlp.layer1 ... layer3`, `bn1`, `bn2`) so its checkpoints
    load as they are; with `norm="ln"` or `"none"` the `bn` slots hold a LayerNorm or nothing, for small
    per-device batches where BatchNorm statistics are too noisy (docs/DESIGN.md, 'SimCLR head norm').
    """

    def __init__(self, in_dim: int, cfg: HeadConfig) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("layer1", nn.Linear(in_dim, cfg.mlp_dim)),
                    ("bn1", _norm(cfg.norm, cfg.mlp_dim)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("layer2", nn.Linear(cfg.mlp_dim, cfg.mlp_dim)),
                    ("bn2", _norm(cfg.norm, cfg.mlp_dim)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("layer3", nn.Linear(cfg.mlp_dim, cfg.out_dim)),
                ]
            )
        )


class DistillHead(nn.Module):
    """MLP (Linear-GELU-Linear-GELU-Linear) to an L2-normalised bottleneck, then cosine similarity to the prototypes.

    DINO's last layer is weight-normalised with its norm frozen at 1 (`norm_last_layer`), i.e. each logit is the cosine
    between the bottleneck embedding and a prototype; here the prototypes are one matrix normalised in the forward
    pass, the same function without a weight-norm parametrisation in the state dict. No batch statistics: every
    output depends on its own sample only, which keeps the loss exact across processes and micro-batches.
    """

    def __init__(self, in_dim: int, cfg: DistillHeadConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, cfg.mlp_dim),
            nn.GELU(),
            nn.Linear(cfg.mlp_dim, cfg.mlp_dim),
            nn.GELU(),
            nn.Linear(cfg.mlp_dim, cfg.bottleneck_dim),
        )
        self.prototypes = nn.Parameter(torch.empty(cfg.out_dim, cfg.bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):  # DINO: truncated normal, std 0.02, zero bias
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., in_dim] -> (unit bottleneck embedding [..., bottleneck_dim], logits [..., out_dim] in [-1, 1])."""
        z = F.normalize(self.mlp(x), dim=-1)
        return z, z @ F.normalize(self.prototypes, dim=-1).t()
