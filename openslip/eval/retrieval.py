"""Zero-shot image-text retrieval (DESIGN §6): image->text and text->image Recall@1/5/10.

With several captions per image (COCO / Flickr30k have five), image->text counts an image as found at k
when ANY of its captions ranks in the top k; text->image counts a caption as found when its own image
does. Images and captions are both encoded data-parallel over ranks (``openslip.eval.features``).
"""

from __future__ import annotations

import torch

from openslip.errors import ConfigError
from openslip.eval.datasets import RetrievalSet
from openslip.eval.features import dataset_features, encode_texts, eval_mode
from openslip.eval.metrics import retrieval_metrics


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
    if not getattr(model, "has_text", False):
        raise ConfigError("retrieval needs a model with a text tower (SLIP or CLIP, not SimCLR-only)")
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
    return retrieval_metrics(image_feats, text_feats, torch.as_tensor(owner), ks=ks)
