"""Frozen-feature extraction, data-parallel over ranks, with an optional on-disk cache.

Each sample is seen exactly once on any number of ranks (docs/DESIGN.md, 'Evaluation'): every rank encodes one
contiguous shard of the dataset (``shard_range``: sizes differ by at most one, no padding samples), then
``gather_rows`` all-gathers the variable-sized shards (padded to the largest and unpadded again), so every rank ends
with the features of every sample exactly once, in dataset order.
On one process all of this is a plain loop.

Feature kinds: ``embed`` is the CLIP image embedding (``encode_image``, what zero-shot and retrieval
compare with text); ``backbone`` is the ViT's final-LayerNorm'd CLS token (``model.visual``, what linear
probes and kNN read, and the only one a SimCLR-only model has).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from openslip import distributed
from openslip.errors import CheckpointError, ConfigError
from openslip.models import MODELS, create_model
from openslip.models.slip import trim_tokens
from openslip.tokenizer import get_tokenizer
from openslip.weights.atomic import atomic_path
from openslip.weights.checkpoint import load_model

FEATURE_KINDS = ("embed", "backbone")


# --- models ---------------------------------------------------------------------------------------------


def load_eval_model(spec: str, *, pretrained: str | None = None, device: torch.device | str = "cpu") -> Any:
    """The model to evaluate, in eval mode on ``device``.

    ``spec`` is an openslip run directory / checkpoint / ``.safetensors`` file, an original SLIP ``.pt``
    file, or a registry name; a name needs ``pretrained``: ``"none"`` (random weights, for smoke tests) or a
    path to weights for that model (e.g. a bare state dict).
    """
    if pretrained is not None:
        if spec not in MODELS:
            raise ConfigError(f"--pretrained needs a model name, one of: {', '.join(MODELS.names())}")
        if pretrained.lower() == "none":
            torch.manual_seed(0)
            return mark_untrained(create_model(spec).to(device).eval())
        return load_model(pretrained, map_location=device, model_name=spec).eval()
    if Path(spec).expanduser().exists():
        return load_model(Path(spec).expanduser(), map_location=device).eval()
    if spec in MODELS:
        raise CheckpointError(
            f"{spec} is a model name, not a checkpoint: pass a checkpoint path, or --pretrained none for random "
            f"weights, or --pretrained FILE for weights of that model"
        )
    raise CheckpointError(f"{spec}: no such checkpoint file or directory")


def mark_untrained(model: Any) -> Any:
    """Flag a randomly initialised model, so that zero-shot and retrieval warn that its scores are a floor."""
    model.untrained = True
    return model


def warn_if_untrained(model: Any, what: str) -> None:
    """Zero-shot and retrieval read the text tower: with random weights their scores are chance level."""
    if getattr(model, "untrained", False):
        warnings.warn(f"{what}: the text tower was never trained (random weights): expect chance level", stacklevel=3)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode (BatchNorm, dropout), then restore its train/eval state."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def feature_fn(model: Any, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The image -> feature function of a feature kind (see the module docstring)."""
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"feature kind {kind!r}; choose one of: {', '.join(FEATURE_KINDS)}")
    if kind == "embed" and not model.has_text:
        raise ConfigError(f"{model.cfg.name} is SimCLR-only: it has no image-text embedding; use backbone features")
    encode = model.encode_image if kind == "embed" else model.visual
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        return encode
    return lambda images: encode(images.to(dtype))  # e.g. a model trained with train.precision=fp64


# --- sharding and gathering -----------------------------------------------------------------------------


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous shard of n items; shard sizes differ by at most one."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` [n_r, ...] (n_r may differ) along dim 0 in rank order; identity on one
    process. Shards are padded to the largest for the collective and trimmed after, so nothing repeats."""
    if distributed.world_size() == 1:
        return x
    x = x.contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(distributed.world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    counts = [int(s.item()) for s in sizes]
    biggest = max(counts)
    padded = torch.zeros((biggest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


# --- extraction -----------------------------------------------------------------------------------------


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled or not distributed.is_main() or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    progress: bool = True,
    desc: str = "features",
    gather: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] float32 and labels [N] (CPU) of a dataset of (image, label), in dataset order.

    Data-parallel: each rank encodes its shard; with ``gather`` every rank gets all N rows, else only its own.
    """
    start, stop = shard_range(len(dataset), distributed.rank(), distributed.world_size())  # type: ignore[arg-type]
    loader = DataLoader(
        Subset(dataset, range(start, stop)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
    )
    feats, labels = [], []
    device = torch.device(device)
    for images, target in _progress(loader, len(loader), desc, progress):
        f = encode(images.to(device, non_blocking=True)).float()
        feats.append(torch.nn.functional.normalize(f, dim=-1) if normalize else f)
        labels.append(torch.as_tensor(target).to(device))
    if feats:
        local = torch.cat(feats)
        local_labels = torch.cat(labels).long()
    else:  # more ranks than samples: an empty shard still joins the gather
        dim = _output_dim(encode, dataset, device)
        local = torch.zeros((0, dim), device=device)
        local_labels = torch.zeros(0, dtype=torch.long, device=device)
    if gather:
        local, local_labels = gather_rows(local), gather_rows(local_labels)
    return local.cpu(), local_labels.cpu()


def _output_dim(encode: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, device: torch.device) -> int:
    x, _ = dataset[0]
    return int(encode(x.unsqueeze(0).to(device)).shape[-1])


@torch.no_grad()
def encode_texts(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    shard: bool = True,
    tokenizer: Any = None,
) -> torch.Tensor:
    """Text embeddings [N, D] float32 (CPU) of ``texts``; with ``shard`` split over ranks and gathered. ``tokenizer``:
    openslip's (``get_tokenizer()``) unless given."""
    tok = tokenizer or get_tokenizer()
    start, stop = shard_range(len(texts), distributed.rank(), distributed.world_size()) if shard else (0, len(texts))
    out = []
    for i in range(start, stop, batch_size):
        tokens = tok(list(texts[i : min(i + batch_size, stop)]), context_length=model.context_length)
        tokens = trim_tokens(tokens).to(device)  # trimmed here: on a GPU the model does not read the length back
        f = model.encode_text(tokens).float()
        out.append(torch.nn.functional.normalize(f, dim=-1) if normalize else f)
    local = torch.cat(out) if out else torch.zeros((0, model.cfg.embed_dim), device=device)
    return (gather_rows(local) if shard else local).cpu()


# --- cache ----------------------------------------------------------------------------------------------


def model_fingerprint(model: torch.nn.Module) -> str:
    """A digest of the model's name and weights (keys the feature cache; a retrained model never hits)."""
    h = hashlib.sha1()
    h.update(str(getattr(getattr(model, "cfg", None), "name", type(model).__name__)).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_features(
    cache_dir: str | os.PathLike | None,
    key_parts: Sequence[str],
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute()`` unless ``cache_dir`` holds the result for ``key_parts``; stores new results there.

    Rank 0 decides whether the file exists and writes it; all ranks compute together (the extraction is a
    collective) or all read the file.
    """
    if cache_dir is None:
        return compute()
    from safetensors.torch import load_file, save_file

    key = hashlib.sha1("\n".join(key_parts).encode()).hexdigest()[:20]
    path = Path(cache_dir).expanduser() / f"features_{key}.safetensors"
    hit = distributed.broadcast_object(path.is_file())
    if hit:
        data = load_file(str(path))
        return data["features"], data["labels"]
    feats, labels = compute()
    if distributed.is_main():
        with atomic_path(path) as tmp:  # safetensors opens the file by name
            tensors = {"features": feats.contiguous(), "labels": labels.contiguous()}
            save_file(tensors, str(tmp), {"key": "\n".join(key_parts)})
    distributed.barrier()
    return feats, labels


def dataset_features(
    model: Any,
    dataset: Any,
    *,
    kind: str = "embed",
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    cache_dir: str | os.PathLike | None = None,
    fingerprint: str | None = None,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gathered features and labels of an ``openslip.eval.datasets.ImageSet``, cached when ``cache_dir``."""
    encode = feature_fn(model, kind)

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        return extract_features(
            encode,
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            normalize=normalize,
            desc=desc,
        )

    if cache_dir is None:
        return compute()
    parts = [fingerprint or model_fingerprint(model), dataset.identity, kind, str(normalize)]
    return cached_features(cache_dir, parts, compute)
