"""The training input pipeline from a `Config`: source -> (decode, views, tokens) in workers -> batches.

Two augmentation paths with the same distributions (docs/DESIGN.md, 'Two paths, one distribution'):
- ``data.augment=cpu``: `SLIPTransform` renders the three views in the loader workers;
- ``data.augment=device``: workers only decode (and shrink very large images); `BatchedSLIPAugment`
  renders the views of the whole batch on the training device, its randomness drawn from
  (seed, step) so a resumed run draws the same parameters.
- ``data.decode=device`` (with ``data.augment=device``): workers only check the files and hand over the JPEG bytes;
  the batch is decoded on the training device (`openslip.data.batch_decode`), then augmented as above. The
  decoded images equal the CPU decode's, so the views and their (seed, step) draws are those of the line above.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from openslip.data.augment.batched import BatchedSLIPAugment
from openslip.data.augment.params import CLIP_VIEW, LOCAL, SIMCLR_VIEW, AugmentConfig
from openslip.data.augment.views import SLIPTransform
from openslip.data.batch_decode import BatchDecoder, shrink
from openslip.data.formats.decode import EncodedJpeg
from openslip.data.loader import LEASE_KEY, TrainLoader, build_train_loader, mix_seed
from openslip.data.sources import open_sources
from openslip.errors import ConfigError, DataError
from openslip.models.slip import trim_tokens
from openslip.step import NO_CLOCK
from openslip.tokenizer import get_tokenizer
from openslip.train.config import Config

_TAG_DEVICE_AUGMENT = 11
_TAG_IMAGES_AUGMENT = 12  # the unpaired images' views (data.train_images): a stream of their own
SSL_VIEWS = ("view1", "view2", "local")  # what the self-supervised term reads, and all unpaired images give it


class BytesOrPixels:
    """Worker transform of ``data.augment=device``: a JPEG's bytes as they are (1-D uint8; data.decode=device), or
    the pixels [3, h, w] of an image the worker decoded (every image with data.decode=cpu; with data.decode=device
    one that is not a JPEG, ...: counted), the longer side at most `max_side`. Collation packs a batch's samples
    into one buffer (`batch_decode.pack`): no padding to a common size and no layout change in the workers, whose
    CPU goes to the decode alone."""

    def __init__(self, max_side: int) -> None:
        self.max_side = max_side

    def __call__(self, image: Image.Image | EncodedJpeg) -> dict[str, np.ndarray]:
        if isinstance(image, EncodedJpeg):
            return {"image_data": np.frombuffer(image.data, dtype=np.uint8)}
        # [3, h, w] in the memory the shrink leaves it (or the decoder, when unshrunk): copied once, into the batch
        return {"image_data": shrink(image, self.max_side).numpy()}


@dataclass
class TrainData:
    loader: TrainLoader
    device_augment: BatchedSLIPAugment | None  # None: the views come ready from the workers
    seed: int
    dtype: torch.dtype = torch.float32  # of the views handed to the model (float64 for train.precision=fp64)
    decoder: BatchDecoder | None = None  # data.augment=device: the packed images on the device (JPEGs decoded there)
    # data.train_images: unpaired images whose SSL views follow each batch's (their own loader, read by this one)
    images: TrainData | None = None
    tag: int = _TAG_DEVICE_AUGMENT  # the stream of the device augmentation's draws
    _batches: Iterator[dict] | None = None
    # the loader's state before the batch prepared ahead was taken (openslip.train.ahead); None: none is held
    held_state: dict | None = None
    # `prepare`'s inputs by step: (batch, inputs, side stream or None); the current step's and the next one's
    _ready: dict[int, tuple] = field(default_factory=dict)

    def next_batch(self) -> dict:
        """The next batch of this loader across epochs (for the unpaired images, which follow the paired batches)."""
        if self._batches is None:
            self._batches = self.loader.forever()
        return next(self._batches)

    def close(self) -> None:
        """End the workers of the unpaired images' loader (the paired loader's belong to the training loop)."""
        if self.images is not None and self.images._batches is not None:
            self.images._batches.close()
            self.images._batches = None

    def hold(self) -> None:
        """Keep the loaders' states (this one's, the unpaired images') from before the next batch is taken ahead."""
        self.held_state = self.loader.state_dict()
        if self.images is not None:
            self.images.hold()

    def release(self) -> None:
        self.held_state = None
        if self.images is not None:
            self.images.release()

    def loader_state(self) -> dict:
        """The loader state a checkpoint saves: before the batch prepared ahead, when one is held."""
        return self.held_state if self.held_state is not None else self.loader.state_dict()

    def prepare(self, batch: dict, step: int, device: torch.device, stream: Any = None) -> None:
        """Make `views(batch, step, device)` now, on the CUDA `stream` when given; `views` then returns them."""
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            inputs = self.views(batch, step, device)
        self._ready[step] = (batch, inputs, stream)

    def _take_ready(self, batch: dict, step: int, device: torch.device) -> dict[str, torch.Tensor] | None:
        if step not in self._ready or self._ready[step][0] is not batch:
            return None
        _, inputs, stream = self._ready.pop(step)
        if stream is not None:  # the step's stream waits for the side stream, whose memory it now uses
            current = torch.cuda.current_stream(device)
            current.wait_stream(stream)
            for value in inputs.values():
                value.record_stream(current)
        return inputs

    def views(self, batch: dict, step: int, device: torch.device, clock: Any = NO_CLOCK) -> dict[str, torch.Tensor]:
        """Model inputs of a batch on `device`: the views it carries or renders (float) and text (long). With
        unpaired images, their SSL views follow the batch's own in view1 / view2 / local ([B + U, ...]): the
        image-text term reads the B pairs, the SSL term all B + U images. `clock` (benchmarks) laps "copy" after the
        host-to-device copies and "decode_augment" after the rest. The inputs `prepare` made for this batch and
        step are returned as they are."""
        ready = self._take_ready(batch, step, device)
        if ready is not None:
            return ready
        inputs = {
            k: v.to(device, non_blocking=True)
            for k, v in batch.items()
            if k in ("image", "view1", "view2", "local", "text")
        }
        if self.decoder is not None:
            items = self.decoder.copy(batch["image_data"], batch["image_index"])
            clock.lap("copy")
            images = self.decoder.decode(items)
        else:
            clock.lap("copy")
        if self.device_augment is not None:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, step, self.tag))
            inputs.update(self.device_augment(images, generator=gen))
        if self.images is not None:
            extra = self.images.views(self.images.next_batch(), step, device)
            inputs.update({k: torch.cat([inputs[k], v]) for k, v in extra.items() if k in SSL_VIEWS})
        out = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        clock.lap("decode_augment")
        self._release(batch, out)
        return out

    def _release(self, batch: dict, inputs: dict[str, torch.Tensor]) -> None:
        """Hand the batch's shared-memory segment back to its worker (``reuse_buffers``): its images were read, into
        the device copy, the pinned copy or the views. Never while an input is still that memory (CPU views of
        data.augment=cpu; ``build_train_data`` does not reuse buffers there): the worker then takes a new one."""
        lease = batch.get(LEASE_KEY)
        if lease is None:
            return
        segment = lease.segment.untyped_storage().data_ptr()
        if all(v.untyped_storage().data_ptr() != segment for v in inputs.values()):
            self.loader.release(batch)


def tokenize_trimmed(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """The workers' tokenizer: captions to token ids [B, L], trimmed on the CPU to the batch's last EOT
    (``trim_tokens``), so that a step on a GPU never reads that length back from the device. The text tower reads
    no further, so the embeddings are those of the untrimmed ids."""
    return trim_tokens(tokenizer(captions))


def views_travel_as(cfg: Config) -> torch.dtype:
    """The dtype of the CPU views' hand-off (data.augment=cpu): autocast's under train.precision=bf16 / fp16. A
    view's first use is the patch embedding, which autocast runs in that dtype: it would round the float32 view to
    it anyway, so a view sent rounded gives the same step to the bit (tested), and half the bytes for the workers
    to write and the training process to pin and copy (231 instead of 462 MB per batch of 256 at 224 px)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)


def open_train_source(cfg: Config, image_size: int, key: str = "train"):
    """The source of `data.train` (or of `data.<key>`): one spec, or a list opened as one source (`open_sources`);
    the demo world is rendered at `image_size` with `data.demo_size` samples."""

    def options(spec: str) -> dict:
        return {"size": cfg.data.demo_size, "image_size": image_size} if spec == "demo" else {}

    return open_sources(getattr(cfg.data, key), format=cfg.data.format, options_for=options, what=f"data.{key}")


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
    tokens; self-distillation (`local` among the views) also `loss.local_crops` crops of side `local_size` each.
    With `data.train_images`, a second loader gives `data.image_batch_size` unpaired images per step, of which only
    the SSL views are made (docs/TRAINING.md, 'Unpaired images')."""
    # data.image_view=simclr: the CLIP view drawn with the SimCLR recipe (the strong-augmentation CLIP baseline)
    augment = AugmentConfig(
        image_size=image_size,
        clip_view=SIMCLR_VIEW if cfg.data.image_view == "simclr" else CLIP_VIEW,
        local_crops=cfg.loss.local_crops if LOCAL in views else 0,
        local_size=local_size or image_size,
    )
    decode = cfg.data.decode_options(image_size)
    max_side = 2 * image_size  # the largest crop of a view is resized to image_size: 2x keeps it from upsampling

    def data(source, views: tuple[str, ...], with_text: bool, batch_size: int, what: str, seed: int) -> TrainData:
        per_rank = batch_size // world_size
        if per_rank * world_size != batch_size:
            raise ConfigError(f"{what}={batch_size} is not divisible by the {world_size} processes")
        device_path = cfg.data.augment == "device"
        transform = BytesOrPixels(max_side) if device_path else SLIPTransform(config=augment, views=views)
        loader = build_train_loader(
            source,
            transform,
            functools.partial(tokenize_trimmed, get_tokenizer()) if with_text else None,
            batch_size=per_rank,
            num_workers=cfg.data.num_workers,
            seed=seed,
            rank=rank,
            world_size=world_size,
            max_skip_rate=cfg.data.max_skip_rate,
            min_samples_for_check=cfg.data.min_samples_for_skip_check,
            decode=decode,
            pin_memory=device.type == "cuda",
            idle_workers=cfg.data.worker_priority == "idle"
            or (cfg.data.worker_priority == "auto" and device.type == "cpu"),
            captions=with_text,
            resampled=cfg.data.resampled,
            # `views` hands each batch's images back once read: always on the device path; for the CPU views only
            # where they are copied (pinned, then to the GPU), not read from the workers' memory by the step
            reuse_buffers=device_path or device.type == "cuda",
            view_dtype=views_travel_as(cfg),
        )
        batched = BatchedSLIPAugment(config=augment, views=views) if device_path else None
        decoder = None
        if device_path:  # the packed images to the device; with data.decode=device their JPEGs decoded there
            decoder = BatchDecoder(device, max_side, decode.draft_size, loader.skips, jpegs=cfg.data.decode == "device")
        return TrainData(loader=loader, device_augment=batched, seed=cfg.seed, dtype=dtype, decoder=decoder)

    paired = data(
        open_train_source(cfg, image_size), views, with_text, cfg.train.batch_size, "train.batch_size", cfg.seed
    )
    if cfg.data.train_images is not None:
        ssl_views = tuple(v for v in views if v in SSL_VIEWS)
        try:
            source = open_train_source(cfg, image_size, "train_images")
        except DataError as err:  # a list names its item already; one spec is named here
            raise DataError(
                str(err) if str(err).startswith("data.train_images") else f"data.train_images: {err}"
            ) from None
        batch = cfg.data.image_batch_size or cfg.train.batch_size
        # an order and views of their own, even when the same files are also paired data
        seed = mix_seed(cfg.seed, _TAG_IMAGES_AUGMENT)
        paired.images = data(source, ssl_views, False, batch, "data.image_batch_size", seed)
        paired.images.tag = _TAG_IMAGES_AUGMENT
    return paired
