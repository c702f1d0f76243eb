"""Classification and retrieval metrics on score matrices (docs/DESIGN.md, 'Evaluation'), all in percent.

The per-dataset metric of the SLIP / CLIP papers is one of ``CLASSIFICATION_METRICS``: ``top1``;
``mean_per_class`` (mean per-class recall, i.e. scikit-learn's balanced accuracy: Aircraft, Pets,
Caltech-101, Flowers); ``top1_top5_mean`` ((top-1 + top-5) / 2: Kinetics-700); ``roc_auc`` (binary
ROC-AUC of the positive class: Hateful Memes). Everything is computed in torch so the library needs no
scikit-learn; the tests check agreement with scikit-learn.
"""

from __future__ import annotations

import torch

from openslip.errors import ConfigError

CLASSIFICATION_METRICS = ("top1", "top5", "mean_per_class", "top1_top5_mean", "roc_auc")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Percentage of rows whose label is among the k highest logits."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels.view(-1, 1).to(logits.device)).any(dim=1)
    return 100.0 * hits.float().mean().item()


def mean_per_class_recall(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of the fraction of their images predicted correctly."""
    labels = labels.to(logits.device).long()
    pred = logits.argmax(dim=1)
    classes = labels.unique()
    n = torch.zeros(int(labels.max()) + 1, device=logits.device).index_add_(0, labels, torch.ones_like(labels).float())
    hit = torch.zeros_like(n).index_add_(0, labels, (pred == labels).float())
    return 100.0 * (hit[classes] / n[classes]).mean().item()


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary ROC-AUC (percent) of ``scores`` [N] for ``labels`` in {0, 1}: the Mann-Whitney statistic,
    ties counted one half (average ranks), as scikit-learn's ``roc_auc_score``."""
    scores = scores.detach().double().flatten().cpu()
    labels = labels.flatten().cpu().bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")  # undefined with one class present
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # Average the ranks within each group of tied scores.
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return 100.0 * float(u / (n_pos * n_neg))


def chance_score(metric: str, num_classes: int) -> float:
    """The expected score (%) of guessing uniformly at random: the line a plot draws under a metric's curve."""
    if metric == "roc_auc":
        return 50.0
    top1, top5 = 100.0 / num_classes, min(100.0, 500.0 / num_classes)
    return {"top5": top5, "top1_top5_mean": (top1 + top5) / 2}.get(metric, top1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, metric: str = "top1") -> dict[str, float]:
    """Every applicable metric, plus ``metric`` (the dataset's reported one) and ``score`` (its value).

    ``logits`` [N, C] are class scores, ``labels`` [N] ints. ROC-AUC (binary tasks only) scores each image
    by the softmax-free margin of class 1 over class 0.
    """
    if metric not in CLASSIFICATION_METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(CLASSIFICATION_METRICS)}")
    labels = labels.to(logits.device).long()
    out: dict[str, float] = {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "mean_per_class": mean_per_class_recall(logits, labels),
    }
    out["top1_top5_mean"] = (out["top1"] + out["top5"]) / 2
    if logits.shape[1] == 2:
        out["roc_auc"] = roc_auc(logits[:, 1] - logits[:, 0], labels)
    elif metric == "roc_auc":
        raise ConfigError(f"metric roc_auc needs a binary task, this one has {logits.shape[1]} classes")
    out["num_samples"] = float(len(labels))
    out["score"] = out[metric]
    return {"metric": metric, **out}  # type: ignore[dict-item]


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] counts: row = true class, column = predicted class."""
    pred = logits.argmax(dim=1).cpu()
    idx = labels.cpu().long() * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


# --- retrieval ---------------------------------------------------------------------------------------------


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_owner: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk: int = 4096,
) -> dict[str, float]:
    """Recall@k both ways from L2-normalised features; ``text_owner[j]`` is the image index of caption j."""
    i2t_rank, t2i_rank = retrieval_ranks(image_features, text_features, text_owner, chunk=chunk)
    return recall_from_ranks(i2t_rank, t2i_rank, ks)


def recall_from_ranks(i2t_rank: torch.Tensor, t2i_rank: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Recall@k (percent) both ways, their mean and the set sizes, from the ranks of `retrieval_ranks`."""
    out = {f"image_to_text_R@{k}": 100.0 * (i2t_rank < k).float().mean().item() for k in ks}
    out.update({f"text_to_image_R@{k}": 100.0 * (t2i_rank < k).float().mean().item() for k in ks})
    out["mean_recall"] = sum(out.values()) / len(out)
    out["num_images"] = float(len(i2t_rank))
    out["num_texts"] = float(len(t2i_rank))
    return out


def retrieval_ranks(
    image_features: torch.Tensor, text_features: torch.Tensor, text_owner: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks: of each image's best own caption among all captions [N_img], and of each caption's own
    image among all images [N_txt] (the per-sample outcomes behind Recall@k).

    Ranks are strict (a tie with the correct item counts in its favour). Image rows are processed in chunks
    so COCO-sized sets (5k x 25k) fit in memory.
    """
    n_img = image_features.shape[0]
    text_owner = text_owner.long().cpu()
    chunks = range(0, n_img, chunk)
    # Pass 1: each caption's score with its own image, read from the same matmul as the ranking below (an
    # elementwise product would round differently and could rank the own image below itself).
    own_score = torch.empty(text_features.shape[0])
    for start in chunks:
        sim = (image_features[start : start + chunk] @ text_features.t()).cpu()  # [c, N_txt]
        mine = (text_owner >= start) & (text_owner < start + sim.shape[0])
        cols = mine.nonzero().flatten()
        own_score[cols] = sim[text_owner[cols] - start, cols]
    # Pass 2: ranks both ways.
    i2t_rank = torch.empty(n_img, dtype=torch.long)
    t2i_rank = torch.zeros(text_features.shape[0], dtype=torch.long)
    for start in chunks:
        sim = (image_features[start : start + chunk] @ text_features.t()).cpu()
        i2t_rank[start : start + sim.shape[0]] = _best_own_rank(sim, text_owner - start)
        t2i_rank += (sim > own_score.view(1, -1)).sum(dim=0)
    return i2t_rank, t2i_rank


def _best_own_rank(sim: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's best own caption; ``owner`` holds caption owners relative to the chunk."""
    rows = torch.arange(sim.shape[0], device=sim.device).view(-1, 1)
    own = owner.to(sim.device).view(1, -1) == rows
    best_own = sim.masked_fill(~own, float("-inf")).max(dim=1).values
    return (sim > best_own.view(-1, 1)).sum(dim=1)
