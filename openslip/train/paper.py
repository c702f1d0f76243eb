"""The SLIP paper's published ImageNet-1K results, as its reference README lists them.

Kept as data so recipes, docs and tests quote one source. Each row is one released checkpoint of the
2021 reference (facebookresearch/SLIP, README "Results and Pre-trained Models"); `None` where the
paper reports no number (SimCLR has no text tower, so no zero-shot).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedResult:
    objective: str  # "clip" | "simclr" | "slip"
    size: str  # "vit_s16" | "vit_b16" | "vit_l16"
    dataset: str  # "yfcc15m" | "cc3m" | "cc12m"
    epochs: int
    zeroshot: float | None  # ImageNet top-1, %
    linear: float | None  # SGD linear probe (MoCo v3's main_linear.py), top-1 %
    finetune: float | None  # BEiT finetuning, top-1 %
    checkpoint: str  # the reference's released file name

    @property
    def summary(self) -> str:
        parts = [f"{name} {value}" for name, value in self.scores().items() if value is not None]
        return ", ".join(parts)

    def scores(self) -> dict[str, float | None]:
        return {"zero-shot": self.zeroshot, "linear": self.linear, "finetune": self.finetune}


_SIZE_WORD = {"vit_s16": "small", "vit_b16": "base", "vit_l16": "large"}


def _row(objective: str, size: str, dataset: str, epochs: int, zs, lin, ft) -> PublishedResult:
    suffix = "" if dataset == "yfcc15m" else f"_{dataset}"
    name = f"{objective}_{_SIZE_WORD[size]}{suffix}_{epochs}ep.pt"
    return PublishedResult(objective, size, dataset, epochs, zs, lin, ft, name)


PUBLISHED: tuple[PublishedResult, ...] = (
    # YFCC15M; ViT-S is MoCo v3's ViT-Small (12 heads, not 6).
    _row("clip", "vit_s16", "yfcc15m", 25, 32.7, 59.3, 78.2),
    _row("simclr", "vit_s16", "yfcc15m", 25, None, 58.1, 79.9),
    _row("slip", "vit_s16", "yfcc15m", 25, 38.3, 66.4, 80.3),
    _row("slip", "vit_s16", "yfcc15m", 50, 39.3, 67.6, 80.7),
    _row("slip", "vit_s16", "yfcc15m", 100, 39.5, 68.3, 80.7),
    _row("clip", "vit_b16", "yfcc15m", 25, 37.6, 66.5, 80.5),
    _row("simclr", "vit_b16", "yfcc15m", 25, None, 64.0, 82.5),
    _row("slip", "vit_b16", "yfcc15m", 25, 42.8, 72.1, 82.6),
    _row("slip", "vit_b16", "yfcc15m", 50, 44.1, 73.0, 82.9),
    _row("slip", "vit_b16", "yfcc15m", 100, 45.0, 73.6, 83.4),
    _row("clip", "vit_l16", "yfcc15m", 25, 40.4, 70.5, 81.0),
    _row("simclr", "vit_l16", "yfcc15m", 25, None, 66.7, 84.0),
    _row("slip", "vit_l16", "yfcc15m", 25, 46.2, 76.0, 84.2),
    _row("slip", "vit_l16", "yfcc15m", 50, 47.4, 75.8, 84.7),
    _row("slip", "vit_l16", "yfcc15m", 100, 47.9, 75.1, 84.8),
    # Conceptual Captions, ViT-B only.
    _row("clip", "vit_b16", "cc3m", 40, 17.1, 53.3, 79.5),
    _row("slip", "vit_b16", "cc3m", 40, 23.0, 65.4, 81.4),
    _row("clip", "vit_b16", "cc12m", 35, 36.5, 69.0, 82.1),
    _row("slip", "vit_b16", "cc12m", 35, 40.7, 73.7, 83.1),
)


def published(objective: str, size: str, dataset: str, epochs: int) -> PublishedResult | None:
    """The paper's row for one pre-training run, or None when the paper trained no such model."""
    for row in PUBLISHED:
        if (row.objective, row.size, row.dataset, row.epochs) == (objective, size, dataset, epochs):
            return row
    return None
