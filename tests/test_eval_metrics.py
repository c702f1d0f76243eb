"""Metrics against scikit-learn and hand-built embeddings (perfect -> 100%, random -> chance)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score, top_k_accuracy_score

from openslip.errors import ConfigError
from openslip.eval.metrics import (
    classification_metrics,
    confusion_matrix,
    mean_per_class_recall,
    retrieval_metrics,
    roc_auc,
    topk_accuracy,
)


def _random_problem(n: int = 500, c: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g) + 1.5 * F.one_hot(labels, c)  # better than chance, imbalanced classes
    return logits, labels


def test_accuracy_and_mean_per_class_agree_with_sklearn() -> None:
    logits, labels = _random_problem()
    pred = logits.argmax(1).numpy()
    assert topk_accuracy(logits, labels, 1) == pytest.approx(100 * accuracy_score(labels, pred))
    top5 = top_k_accuracy_score(labels.numpy(), logits.numpy(), k=5, labels=list(range(7)))
    assert topk_accuracy(logits, labels, 5) == pytest.approx(100 * top5)
    assert mean_per_class_recall(logits, labels) == pytest.approx(100 * balanced_accuracy_score(labels, pred))


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_agrees_with_sklearn(ties: bool) -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (300,), generator=g)
    scores = torch.randn(300, generator=g) + labels
    if ties:
        scores = scores.round()  # many tied scores: average ranks
    assert roc_auc(scores, labels) == pytest.approx(100 * roc_auc_score(labels.numpy(), scores.numpy()))


def test_classification_metrics_reports_the_requested_metric() -> None:
    logits, labels = _random_problem(c=2)
    m = classification_metrics(logits, labels, "roc_auc")
    assert m["metric"] == "roc_auc" and m["score"] == m["roc_auc"]
    m = classification_metrics(*_random_problem(c=10), "top1_top5_mean")
    assert m["score"] == pytest.approx((m["top1"] + m["top5"]) / 2)
    with pytest.raises(ConfigError):
        classification_metrics(*_random_problem(c=10), "roc_auc")
    with pytest.raises(ConfigError):
        classification_metrics(*_random_problem(), "accuracy")


def test_perfect_and_random_zero_shot_embeddings() -> None:
    c, d = 10, 32
    classes = F.normalize(torch.randn(c, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.arange(1000) % c
    perfect = F.normalize(classes[labels] + 0.01 * torch.randn(1000, d), dim=-1)
    assert classification_metrics(perfect @ classes.t(), labels)["top1"] == 100.0
    noise = F.normalize(torch.randn(1000, d, generator=torch.Generator().manual_seed(1)), dim=-1)
    m = classification_metrics(noise @ classes.t(), labels)
    assert abs(m["top1"] - 100 / c) < 4 and abs(m["top5"] - 50) < 6


def test_confusion_matrix_counts() -> None:
    logits = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]])
    cm = confusion_matrix(logits, torch.tensor([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_retrieval_perfect_and_random() -> None:
    d, n, per = 64, 50, 5
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    owner = torch.arange(n).repeat_interleave(per)
    txt = F.normalize(img[owner] + 0.05 * torch.randn(n * per, d, generator=g), dim=-1)
    m = retrieval_metrics(img, txt, owner)
    assert all(m[f"{w}_R@{k}"] == 100.0 for w in ("image_to_text", "text_to_image") for k in (1, 5, 10))
    rand = F.normalize(torch.randn(n * per, d, generator=g), dim=-1)
    m = retrieval_metrics(img, rand, owner)
    assert abs(m["text_to_image_R@10"] - 20) < 8  # 10 of 50 images


def test_retrieval_counts_any_caption_for_image_to_text() -> None:
    # 2 images, captions 0, 1 belong to image 0 and caption 2 to image 1.
    owner = torch.tensor([0, 0, 1])
    img = torch.eye(3)[:2]  # image 0 = e0, image 1 = e1
    txt = torch.stack([torch.tensor([0.0, 1, 0]), torch.tensor([0.6, 0, 0.8]), torch.tensor([0.0, 0, 1])])
    m = retrieval_metrics(img, txt, owner, ks=(1, 2))
    # image 0: sims [0, .6, 0] -> its caption 1 ranks first; image 1: sims [1, 0, 0] -> its caption 2 ties for 2nd
    assert m["image_to_text_R@1"] == 50.0 and m["image_to_text_R@2"] == 100.0
    # caption 0 (image 0): sims to images [0, 1] -> own image second; caption 1: [.6, 0] first; caption 2: [0, 0]
    # tie, counted in its favour
    assert m["text_to_image_R@1"] == pytest.approx(200 / 3) and m["text_to_image_R@2"] == 100.0
    # chunked computation gives the same numbers
    assert retrieval_metrics(img, txt, owner, ks=(1, 2), chunk=1) == m
