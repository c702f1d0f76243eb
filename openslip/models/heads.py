"""The SimCLR projection head of SLIP (§3.2): 3-layer MLP, width 4096, output 256."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from openslip.models.config import HeadConfig


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
