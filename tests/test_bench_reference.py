"""`openslip bench train --compare-reference PATH` times the original SLIP code from a user's checkout.

The real checkout needs timm, whose wheels do not import with the CPU build of torch here, so these tests use a
stand-in checkout with the reference's module layout and interfaces: ``models.py`` with an upper-case constructor
per model and ``get_loss(model, ssl_temp, ssl_scale)``, ``losses.py``, SyncBatchNorm in the SimCLR head, and a
forward taking (image, text, aug1, aug2) positionally and returning the reference's output dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openslip.bench_reference import reference_name
from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

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


def _checkout(tmp_path: Path, models: str = STAND_IN_MODELS) -> Path:
    root = tmp_path / "SLIP"
    root.mkdir()
    (root / "models.py").write_text(models)
    (root / "losses.py").write_text(STAND_IN_LOSSES)
    return root


def _bench(*extra: str) -> list[str]:
    return ["bench", "train", "--model", "slip_vit_micro", "--batch-size", "4", "--steps", "2", "--warmup", "1",
            "--peak-budget", "0.05", *extra]  # fmt: skip


def test_reference_names() -> None:
    assert reference_name("slip_vit_s16") == "SLIP_VITS16"
    assert reference_name("clip_vit_b16") == "CLIP_VITB16"
    assert reference_name("simclr_vit_l16") == "SIMCLR_VITL16"


def test_compare_reference_times_the_checkouts_step(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(_bench("--compare-reference", str(_checkout(tmp_path)), "--output", str(out))) == 0
    r = json.loads(out.read_text())
    assert r["reference"]["model"] == "SLIP_VITMICRO"
    ref = r["reference"]["model_only"]
    assert ref["samples_per_s"] > 0 and set(ref["breakdown_s"]) == {"data", "forward", "backward", "optimizer"}
    assert r["speedup_vs_reference"]["model_only"] == pytest.approx(
        r["model_only"]["samples_per_s"] / ref["samples_per_s"]
    )
    printed = capsys.readouterr().out
    assert "reference SLIP_VITMICRO" in printed and "speed-up vs the reference checkout" in printed


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "no models.py and losses.py there"),
        ("broken", "cannot import the reference code: No module named 'timm_that_is_not_here'"),
        ("unknown", "the reference has no model 'SLIP_VITMICRO'; it has: SLIP_VITS16"),
    ],
)
def test_compare_reference_bad_checkouts(tmp_path: Path, capsys, setup: str, message: str) -> None:
    if setup == "missing":
        path = tmp_path / "nothing"
    elif setup == "broken":
        path = _checkout(tmp_path, "import timm_that_is_not_here\n")
    else:
        path = _checkout(tmp_path, STAND_IN_MODELS.replace("def SLIP_VITMICRO", "def SLIP_VITS16"))
    assert main(_bench("--compare-reference", str(path))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
