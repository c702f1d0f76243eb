"""Zero-shot classification (CLIP §3.1.4): class names x prompt templates -> averaged text embeddings.

Each class's classifier weight is the mean of its L2-normalised prompt embeddings, normalised again;
an image is assigned the class of highest cosine similarity. ``evaluate_zero_shot`` runs this on any
``openslip.eval.datasets.ImageSet`` (demo task, image folder, CSV; class names and templates from the
catalog) data-parallel over ranks and reports the dataset's metric (``openslip.eval.metrics``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from openslip.data.demo.tasks import demo_task
from openslip.errors import ConfigError
from openslip.eval.datasets import DEFAULT_TEMPLATES
from openslip.eval.features import dataset_features, encode_texts, eval_mode, warn_if_untrained
from openslip.eval.metrics import classification_metrics, topk_accuracy
from openslip.models.slip import SLIP
from openslip.tokenizer import Tokenizer

if TYPE_CHECKING:
    from openslip.eval.datasets import ImageSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@torch.no_grad()
def zero_shot_classifier(
    model: SLIP,
    classnames: Sequence[str | Sequence[str]],
    templates: Sequence[str],
    *,
    tokenizer: Tokenizer | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    shard: bool = False,
) -> torch.Tensor:
    """[embed_dim, num_classes] normalised class embeddings.

    A class given as a list of names (the reference's synonym lists, e.g. FER-2013 "happy" / "smiling") is
    prompted with every (template, name) pair, and all those embeddings are averaged with equal weight, as the
    reference's eval_zeroshot.py does. With ``shard`` the prompts are split over ranks and gathered (a
    collective: every rank must call it).
    """
    per_class = [[c] if isinstance(c, str) else list(c) for c in classnames]
    prompts = [t.format(name) for names in per_class for t in templates for name in names]  # class-major: [P]
    per_prompt = encode_texts(  # [P, D]
        model, prompts, batch_size=batch_size, device=device, shard=shard, tokenizer=tokenizer
    ).to(device)
    counts = [len(names) * len(templates) for names in per_class]
    if len(set(counts)) == 1:  # the same number of prompts per class: [C, T * names, D]
        means = per_prompt.view(len(per_class), counts[0], -1).mean(dim=1)
    else:
        means = torch.stack([chunk.mean(dim=0) for chunk in per_prompt.split(counts)])  # [C, D]
    return torch.nn.functional.normalize(means, dim=-1).t()


def normalize_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] with the ImageNet mean / std (images already at size)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def image_features(
    model: SLIP, batches: Iterable[torch.Tensor], *, device: torch.device | str = "cpu", normalize: bool = True
) -> torch.Tensor:
    """Concatenated CLIP image embeddings of an iterable of [B, 3, H, W] batches."""
    feats = []
    for x in batches:
        f = model.encode_image(x.to(device)).float()
        feats.append(torch.nn.functional.normalize(f, dim=-1) if normalize else f)
    return torch.cat(feats)


def evaluate_demo_zero_shot(
    model: SLIP,
    task_name: str,
    *,
    n: int = 1000,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> dict[str, float]:
    """Zero-shot top-1 / top-5 accuracy (%) on a demo-world task's test split."""
    size = image_size or model.cfg.vision.image_size
    task = demo_task(task_name, "test", n, image_size=size)
    with eval_mode(model):
        classifier = zero_shot_classifier(model, task.classnames, task.templates, device=device)
        images, labels = task.arrays()
        batches = (normalize_uint8(images[i : i + batch_size]) for i in range(0, len(images), batch_size))
        logits = image_features(model, batches, device=device) @ classifier
    target = torch.as_tensor(labels, device=logits.device)
    return {
        "top1": topk_accuracy(logits, target, 1),
        "top5": topk_accuracy(logits, target, 5),
        "chance": 100.0 / task.num_classes,
    }


def warn_if_numbered(dataset: ImageSet) -> None:
    """Class folders `0/ 1/ ...` or integer CSV labels with no class names prompt "a photo of a 0.": the score is
    near chance whatever the model learned. Said once, in one line (digit classes with their own templates, as
    a catalog's MNIST, are meant)."""
    names = dataset.prompt_names or dataset.classnames
    if all(isinstance(n, str) and n.isdigit() for n in names) and tuple(dataset.templates) == DEFAULT_TEMPLATES:
        warnings.warn(
            f"zero-shot {dataset.name}: the class names are numbers ({', '.join(names[:3])}, ...)"
            f' and the prompts read "{DEFAULT_TEMPLATES[0].format(names[0])}": give their names with --classnames '
            "FILE (TEST#PROMPTS.json in training's eval.sets), or a catalog dataset",
            stacklevel=3,
        )


def evaluate_zero_shot(
    model: SLIP,
    dataset: ImageSet,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Zero-shot metrics of ``dataset`` (all ranks take part; every rank gets the same result).

    Returns (metrics, logits [N, C], labels [N]); the metrics hold top1, top5, mean_per_class,
    top1_top5_mean (and roc_auc on binary tasks), ``metric`` (the dataset's) and ``score`` (its value).
    """
    if not model.has_text:
        raise ConfigError(f"{model.cfg.name} is SimCLR-only: it has no text tower for zero-shot transfer")
    warn_if_untrained(model, f"zero-shot {dataset.name}")
    warn_if_numbered(dataset)
    with eval_mode(model):
        classifier = zero_shot_classifier(
            model,
            dataset.prompt_names or dataset.classnames,
            dataset.templates,
            device=device,
            batch_size=batch_size,
            shard=True,
        )
        feats, labels = dataset_features(
            model,
            dataset,
            kind="embed",
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            cache_dir=cache_dir,
            desc=f"zero-shot {dataset.name}",
        )
    logits = feats @ classifier.cpu()  # [N, C] cosine similarities
    metrics = classification_metrics(logits, labels, dataset.metric)
    metrics["num_classes"] = float(dataset.num_classes)
    metrics["chance"] = 100.0 / dataset.num_classes
    return metrics, logits, labels
