"""Linear probe, kNN and finetuning pieces on synthetic features and micro models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openslip.eval.finetune import FinetuneConfig, build_classifier, classifier_param_groups, layer_id, mix_batch
from openslip.eval.knn import knn_evaluate, knn_scores
from openslip.eval.linear import SGDProbeConfig, epoch_shard, sgd_learning_rate
from openslip.eval.logistic import LogisticConfig, logistic_probe
from openslip.models import create_model
from openslip.optim import warmup_cosine


def _separable(n: int, c: int = 5, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(c, d, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(n) % c
    return centres[labels] + torch.randn(n, d, generator=g), labels


def test_logistic_probe_separable_reports_c() -> None:
    tx, ty = _separable(300)
    sx, sy = _separable(200, seed=1)
    cfg = LogisticConfig(grid=(-4.0, -2.0, 0.0, 2.0), refine_steps=1, max_iter=200)
    m, scores = logistic_probe(tx, ty, sx, sy, num_classes=5, config=cfg)
    assert m["top1"] > 95 and m["score"] == m["top1"] and scores.shape == (200, 5)
    assert 1e-4 <= m["C"] <= 1e3 and m["val_score"] > 90 and m["num_c_tried"] >= 4


def test_logistic_probe_random_features_near_chance() -> None:
    g = torch.Generator().manual_seed(3)
    tx, sx = torch.randn(300, 16, generator=g), torch.randn(400, 16, generator=g)
    ty, sy = torch.arange(300) % 4, torch.arange(400) % 4
    m, _ = logistic_probe(tx, ty, sx, sy, num_classes=4, config=LogisticConfig(grid=(-2.0, 0.0), refine_steps=0))
    assert abs(m["top1"] - 25) < 10


def test_knn_separable_and_by_hand() -> None:
    tx, ty = _separable(300)
    sx, sy = _separable(200, seed=1)
    assert knn_evaluate(tx, ty, sx, sy, num_classes=5)["top1"] > 95
    # hand check: neighbours with sims 1.0 (class 1) and 0.6, 0.6 (class 0), k=3, T=0.5
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    labels = torch.tensor([1, 0, 0, 2])
    s = knn_scores(train, labels, torch.tensor([[1.0, 0.0]]), num_classes=3, k=3, temperature=0.5)
    assert s[0].tolist() == pytest.approx([2 * math.exp(1.2), math.exp(2.0), 0.0])


def test_sgd_lr_fix_and_reference_bug() -> None:
    cfg = SGDProbeConfig(batch_size=256, base_lr=0.1)
    assert sgd_learning_rate(cfg, 1) == sgd_learning_rate(cfg, 8) == pytest.approx(0.1)
    bug = SGDProbeConfig(batch_size=256, base_lr=0.1, reference_lr_bug=True)
    assert sgd_learning_rate(bug, 1) == pytest.approx(0.1)
    assert sgd_learning_rate(bug, 4) == pytest.approx(0.1 / 16)  # divided by the world size twice


def test_epoch_shards_cover_every_sample() -> None:
    parts = [epoch_shard(10, 2, 0, r, 3) for r in range(3)]
    assert all(len(p) == 4 for p in parts)
    joined = np.concatenate(parts)
    assert set(joined.tolist()) == set(range(10)) and len(joined) == 12  # 2 wrapped to even out the steps


def test_finetune_parts() -> None:
    model = create_model("slip_vit_micro")
    vit = build_classifier(model, 5, drop_path=0.1)
    torch.testing.assert_close(vit.blocks[0].attn.qkv.weight, model.visual.blocks[0].attn.qkv.weight)
    assert vit.head.weight.abs().max() < 1e-3
    assert [layer_id(n, vit) for n in ("cls_token", "patch_embed.proj.weight", "blocks.1.mlp.fc1.weight", "head.bias")]
    assert layer_id("blocks.1.norm1.weight", vit) == 2 and layer_id("norm.weight", vit) == 3
    groups = classifier_param_groups(vit, 0.05, 0.5)
    scales = {round(g["lr_scale"], 4) for g in groups}
    assert scales == {0.125, 0.25, 0.5, 1.0}  # stem, block 0, block 1, norm + head
    assert all(g["weight_decay"] == 0 for g in groups if any(p.ndim < 2 for p in g["params"]))
    assert warmup_cosine(0, 100, warmup=10, peak=1.0, floor=0.0) == 0
    assert warmup_cosine(10, 100, warmup=10, peak=1.0, floor=0.0) == 1.0
    assert warmup_cosine(100, 100, warmup=10, peak=1.0, floor=0.01) == pytest.approx(0.01)
    x = torch.randn(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    mixed, target = mix_batch(x, y, 5, FinetuneConfig(), np.random.default_rng(0))
    assert mixed.shape == x.shape and torch.allclose(target.sum(1), torch.ones(4))


@pytest.mark.slow
def test_finetune_beats_linear_probe_on_demo() -> None:
    """A randomly initialised micro ViT: finetuning learns the colours better than a probe of its random features."""
    from openslip.data.augment.classify import ProbeTransform
    from openslip.eval.datasets import open_classification
    from openslip.eval.features import dataset_features
    from openslip.eval.finetune import finetune

    torch.manual_seed(0)
    model = create_model("slip_vit_micro").eval()
    train = open_classification("demo_colours", split="train", image_size=32, n=1024)
    test = open_classification("demo_colours", split="test", image_size=32, n=256)
    tx, ty = dataset_features(model, train, kind="backbone")
    sx, sy = dataset_features(model, test, kind="backbone")
    probe, _ = logistic_probe(tx, ty, sx, sy, num_classes=8, config=LogisticConfig(refine_steps=1, max_iter=200))
    train.with_transform(ProbeTransform(32, (0.5, 1.0)))
    cfg = FinetuneConfig(
        epochs=10, warmup_epochs=1, batch_size=64, base_lr=4e-2, layer_decay=1.0, drop_path=0.0, mixup_alpha=0.0,
        cutmix_alpha=0.0, label_smoothing=0.0,
    )  # fmt: skip
    ft, _ = finetune(model, train, test, num_classes=8, config=cfg, log=False)
    assert ft["top1"] > probe["top1"]
