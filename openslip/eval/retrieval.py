"""Zero-shot image-text retrieval (docs/DESIGN.md, 'Evaluation'): image->text and text->image Recall@1/5/10.

With several captions per image (COCO / Flickr30k have five), image->text counts an image as found at k
when ANY of its captions ranks in the top k; text->image counts a caption as found when its own image
does. Images and captions are both encoded data-parallel over ranks (``openslip.eval.features``).
"""

from __future__ import annotations

import torch

from openslip.errors import ConfigError
from openslip.eval.datasets import RetrievalSet
from openslip.eval.features import dataset_features, encode_texts, eval_mode, warn_if_untrained
from openslip.eval.metrics import recall_from_ranks, retrieval_ranks


def evaluate_retrieval(
    model: torch.nn.Module,
    data: RetrievalSet,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k both ways (percent), plus their mean and the set sizes; every rank gets the same result."""
    i2t, t2i, _ = retrieval_ranks_of(
        model, data, batch_size=batch_size, num_workers=num_workers, device=device, cache_dir=cache_dir
    )
    return recall_from_ranks(i2t, t2i, ks)


def retrieval_ranks_of(
    model: torch.nn.Module,
    data: RetrievalSet,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample outcomes: each image's rank of its best caption [N_img], each caption's rank of its image
    [N_txt], and each caption's image [N_txt] (see ``metrics.retrieval_ranks``)."""
    if not getattr(model, "has_text", False):
        raise ConfigError("retrieval needs a model with a text tower (SLIP or CLIP, not SimCLR-only)")
    warn_if_untrained(model, f"retrieval {data.name}")
    texts, owner = data.flat()
    with eval_mode(model):
        image_feats, _ = dataset_features(
            model,
            data.images,
            kind="embed",
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            cache_dir=cache_dir,
            desc=f"retrieval images {data.name}",
        )
        text_feats = encode_texts(model, texts, batch_size=batch_size, device=device)
    owner_t = torch.as_tensor(owner)
    i2t, t2i = retrieval_ranks(image_feats, text_feats, owner_t)
    return i2t, t2i, owner_t
