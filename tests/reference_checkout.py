"""A stand-in for a checkout of the original SLIP code, with its module layout and interfaces: ``models.py`` with
an upper-case constructor per model and ``get_loss(model, ssl_temp, ssl_scale)``, ``losses.py``, SyncBatchNorm in
the SimCLR head, and a forward taking (image, text, aug1, aug2) positionally and returning the reference's output
dict. The real checkout needs timm, whose wheels do not import with the CPU build of torch used here."""

from __future__ import annotations

from pathlib import Path

STAND_IN_MODELS = """
import torch
from torch import nn

import losses


class SLIP(nn.Module):
    def __init__(self, ssl_mlp_dim, ssl_emb_dim, **kwargs):
        super().__init__()
        self.visual = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 16))
        self.token_embedding = nn.Embedding(49408, 16)
        self.image_projection = nn.Parameter(torch.randn(16, 8) * 0.1)
        self.text_projection = nn.Parameter(torch.randn(16, 8) * 0.1)
        self.logit_scale = nn.Parameter(torch.ones([]) * 2.6592)
        self.image_mlp = nn.Sequential(
            nn.Linear(16, ssl_mlp_dim), nn.SyncBatchNorm(ssl_mlp_dim), nn.ReLU(), nn.Linear(ssl_mlp_dim, ssl_emb_dim)
        )

    def forward(self, image, text, aug1, aug2):
        text_feat = self.token_embedding(text).mean(dim=1)
        return {
            "image_embed": self.visual(image) @ self.image_projection,
            "text_embed": text_feat @ self.text_projection,
            "logit_scale": self.logit_scale.exp(),
            "aug1_embed": self.image_mlp(self.visual(aug1)),
            "aug2_embed": self.image_mlp(self.visual(aug2)),
        }


def SLIP_VITMICRO(**kwargs):
    return SLIP(**kwargs)


def get_loss(model, ssl_temp, ssl_scale):
    return losses.SLIPLoss(ssl_temp, ssl_scale)
"""

STAND_IN_LOSSES = """
import torch
import torch.nn.functional as F
from torch import nn


class SLIPLoss(nn.Module):
    def __init__(self, ssl_temp, ssl_scale):
        super().__init__()
        self.ssl_temp, self.ssl_scale = ssl_temp, ssl_scale

    def forward(self, out):
        i, t = F.normalize(out["image_embed"], dim=-1), F.normalize(out["text_embed"], dim=-1)
        labels = torch.arange(len(i))
        logits = out["logit_scale"] * i @ t.t()
        clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        a, b = F.normalize(out["aug1_embed"], dim=-1), F.normalize(out["aug2_embed"], dim=-1)
        ssl = F.cross_entropy(a @ b.t() / self.ssl_temp, labels)
        return {"loss": clip + self.ssl_scale * ssl, "clip_loss": clip, "ssl_loss": ssl}
"""


def write_checkout(root: Path, models: str = STAND_IN_MODELS) -> Path:
    """``root`` holding the stand-in's models.py and losses.py; returns it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.py").write_text(models)
    (root / "losses.py").write_text(STAND_IN_LOSSES)
    return root
