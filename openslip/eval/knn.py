"""Weighted kNN classification on frozen features (the DINO protocol, Caron et al. 2021, §4.1 / App. D).

Train and test features are L2-normalised; each test image takes its ``k`` (20) most cosine-similar train
images, and each neighbour votes for its class with weight ``exp(similarity / T)`` (T = 0.07).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from openslip.errors import ConfigError
from openslip.eval.metrics import classification_metrics


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """[N_test, num_classes] summed neighbour weights per class (argmax = the kNN prediction)."""
    if k < 1 or temperature <= 0:
        raise ConfigError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    train = F.normalize(train_features.float(), dim=-1)
    test = F.normalize(test_features.float(), dim=-1)
    labels = train_labels.long().to(train.device)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.t()  # [c, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)  # [c, k]
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        out.append(votes.scatter_add_(1, labels[top_idx], weights))
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    metric: str = "top1",
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """kNN metrics (percent; see ``metrics.classification_metrics``) plus the k and temperature used."""
    scores = knn_scores(
        train_features, train_labels, test_features, num_classes=num_classes, k=k, temperature=temperature
    )
    out = classification_metrics(scores, test_labels, metric)
    used = min(k, len(train_labels))  # knn_scores clamps k to the train set's size: report the k that voted
    out.update({"k": float(used), "temperature": float(temperature), "num_train": float(len(train_labels))})
    return out
