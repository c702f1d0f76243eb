"""The training input pipeline from a `Config`: source -> (decode, views, tokens) in workers -> batches.

Two augmentation paths with the same distributions (docs/DESIGN.md, 'Two paths, one distribution'):
- ``data.augment=cpu``: `SLIPTransform` renders the three views in the loader workers;
- ``data.augment=device``: workers only decode (and shrink very large images); `BatchedSLIPAugment`
  renders the views of the whole batch on the training device, its randomness drawn from
  (seed, step) so a resumed run draws the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from openslip.data.augment.batched import BatchedSLIPAugment
from openslip.data.augment.params import CLIP_VIEW, LOCAL, SIMCLR_VIEW, AugmentConfig
from openslip.data.augment.views import SLIPTransform, to_rgb_uint8
from openslip.data.loader import TrainLoader, build_train_loader, mix_seed
from openslip.data.sources import open_sources
from openslip.errors import ConfigError
from openslip.tokenizer import get_tokenizer
from openslip.train.config import Config

_TAG_DEVICE_AUGMENT = 11


class DecodeOnly:
    """Worker transform of the device path: RGB uint8, longer side at most `max_side`, zero-padded to
    a square so images of any shape stack into one batch; `raw_hw` keeps the true size."""

    def __init__(self, max_side: int) -> None:
        self.max_side = max_side

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        if max(image.size) > self.max_side:
            image = image.copy()
            image.thumbnail((self.max_side, self.max_side), Image.Resampling.BILINEAR)
        arr = torch.tensor(to_rgb_uint8(image)).permute(2, 0, 1)  # [3, h, w]; a copy (the array may be read-only)
        out = torch.zeros(3, self.max_side, self.max_side, dtype=torch.uint8)
        out[:, : arr.shape[1], : arr.shape[2]] = arr
        return {"raw": out, "raw_hw": torch.tensor(arr.shape[1:])}


@dataclass
class TrainData:
    loader: TrainLoader
    device_augment: BatchedSLIPAugment | None  # None: the views come ready from the workers
    seed: int
    dtype: torch.dtype = torch.float32  # of the views handed to the model (float64 for train.precision=fp64)

    def views(self, batch: dict, step: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Model inputs of a batch on `device`: the views it carries or renders (float) and text (long)."""
        inputs = {
            k: v.to(device, non_blocking=True)
            for k, v in batch.items()
            if k in ("image", "view1", "view2", "local", "text")
        }
        if self.device_augment is not None:
            raw = batch["raw"].to(device, non_blocking=True)
            images = [raw[i, :, :h, :w] for i, (h, w) in enumerate(batch["raw_hw"].tolist())]
            gen = torch.Generator().manual_seed(mix_seed(self.seed, step, _TAG_DEVICE_AUGMENT))
            inputs.update(self.device_augment(images, generator=gen))
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def open_train_source(cfg: Config, image_size: int):
    """The source of `data.train`: one spec, or a list opened as one source (`open_sources`); the demo world is
    rendered at `image_size` with `data.demo_size` samples."""

    def options(spec: str) -> dict:
        return {"size": cfg.data.demo_size, "image_size": image_size} if spec == "demo" else {}

    return open_sources(cfg.data.train, format=cfg.data.format, options_for=options, what="data.train")


def build_train_data(
    cfg: Config,
    image_size: int,
    views: tuple[str, ...],
    with_text: bool,
    rank: int,
    world_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    local_size: int = 0,
) -> TrainData:
    """The training loader of `cfg.data` for this rank; batch size per rank = global / (world x accum).

    Only what the model's objectives read is produced (docs/DESIGN.md, 'Work follows the objective'): `views` are
    the image views it takes (`ModelConfig.image_views`), `with_text` whether it has a text tower. CLIP-only gets
    the CLIP view and tokens, SimCLR-only the two SimCLR views and no caption at all, SLIP all three views and
    tokens; self-distillation (`local` among the views) also `loss.local_crops` crops of side `local_size` each."""
    source = open_train_source(cfg, image_size)
    per_rank = cfg.train.batch_size // world_size
    if per_rank * world_size != cfg.train.batch_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {world_size} processes")
    # data.image_view=simclr: the CLIP view drawn with the SimCLR recipe (the strong-augmentation CLIP baseline)
    augment = AugmentConfig(
        image_size=image_size,
        clip_view=SIMCLR_VIEW if cfg.data.image_view == "simclr" else CLIP_VIEW,
        local_crops=cfg.loss.local_crops if LOCAL in views else 0,
        local_size=local_size or image_size,
    )
    device_path = cfg.data.augment == "device"
    transform = DecodeOnly(2 * image_size) if device_path else SLIPTransform(config=augment, views=views)
    loader = build_train_loader(
        source,
        transform,
        get_tokenizer() if with_text else None,
        batch_size=per_rank,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        max_skip_rate=cfg.data.max_skip_rate,
        min_samples_for_check=cfg.data.min_samples_for_skip_check,
        decode=cfg.data.decode_options(image_size),
        pin_memory=device.type == "cuda",
        idle_workers=cfg.data.worker_priority == "idle"
        or (cfg.data.worker_priority == "auto" and device.type == "cpu"),
        captions=with_text,
    )
    batched = BatchedSLIPAugment(config=augment, views=views) if device_path else None
    return TrainData(loader=loader, device_augment=batched, seed=cfg.seed, dtype=dtype)
