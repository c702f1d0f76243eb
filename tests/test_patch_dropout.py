"""FLIP's patch dropout (`train.patch_dropout`): training steps run on a random subset of each image's patches,
evaluation on all of them; every objective trains with it through `openslip train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openslip.cli import main
from openslip.models import create_model
from openslip.models.flops import slip_sample_flops, vit_forward_flops
from openslip.models.vision import kept_patches

pytestmark = pytest.mark.usefixtures("one_thread")


def _tokens_into_blocks(vit, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = vit.blocks[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    try:
        vit.forward_features(x)
    finally:
        handle.remove()
    return seen[0]  # [B, T, D]


def test_training_drops_patches_and_evaluation_sees_all() -> None:
    torch.manual_seed(0)
    vit = create_model("slip_vit_micro").visual.double()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    vit.eval()
    full = _tokens_into_blocks(vit, x)  # [3, 1 + N, D]
    n = full.shape[1] - 1
    reference_out = vit(x)
    vit.patch_dropout = 0.5
    assert torch.equal(vit(x), reference_out)  # eval mode: no dropout
    vit.train()
    kept = _tokens_into_blocks(vit, x)
    assert kept.shape == (3, 1 + kept_patches(n, 0.5), full.shape[-1]) and kept_patches(n, 0.5) == n // 2
    for b in range(3):
        assert torch.equal(kept[b, 0], full[b, 0])  # CLS first, unchanged
        rows = {tuple(r.tolist()) for r in full[b, 1:]}
        assert all(tuple(r.tolist()) in rows for r in kept[b, 1:])  # the kept patches keep their positions
        assert len({tuple(r.tolist()) for r in kept[b, 1:]}) == n // 2  # no patch twice


def test_flops_count_the_kept_tokens() -> None:
    cfg = create_model("slip_vit_micro").cfg
    patch0, blocks0 = vit_forward_flops(cfg.vision, 64)
    patch1, blocks1 = vit_forward_flops(cfg.vision, 64, 0.5)
    assert patch1 == patch0 and blocks1 < blocks0
    full = slip_sample_flops(cfg, batch_size=8, image_size=64)
    half = slip_sample_flops(cfg, batch_size=8, image_size=64, patch_dropout=0.5)
    assert half.train < full.train and half.text == full.text


@pytest.mark.parametrize(
    ("model", "scales"),
    [("slip_vit_micro", []), ("clip_vit_micro", ["loss.ssl_scale=0"]), ("simclr_vit_micro", ["loss.clip_scale=0"])],
)
def test_every_objective_trains_with_patch_dropout(model: str, scales: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", f"model={model}", *scales, "train.patch_dropout=0.5", "train.steps=2", "train.batch_size=8",
            "data.num_workers=0", "data.image_size=32", "eval.sets=[]", f"out_dir={out}", "train.progress=false",
            "optim.warmup_steps=1", "train.log_every=1"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert "patch_dropout: 0.5" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.patch_dropout=1.0"], "train.patch_dropout must be in [0, 1)"),
        (["train.patch_dropout=-0.1"], "train.patch_dropout must be in [0, 1)"),
        (["train.patch_dropout=0.5", "train.accum_steps=2"], "train.patch_dropout needs train.accum_steps=1"),
    ],
)
def test_bad_patch_dropout_is_one_line(overrides: list[str], message: str, tmp_path: Path, capsys) -> None:
    code = main(["train", "model=slip_vit_micro", *overrides, f"out_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
