"""The built-in demo world: a procedural image-caption dataset that needs no files.

Each sample is a function of (seed, stream, index) only: one or two coloured, textured shapes
(``demo_scene``) rendered in numpy (``demo_render``) with a caption from a small grammar plus web-like
noise (``demo_captions``). Splits and evaluation tasks draw from different streams, so they never
share an image. ``openslip train`` with no data argument pre-trains on the "train" split.

    world = DemoWorld(DemoWorldConfig(seed=0, image_size=64))
    s = world[0]   # {"image": uint8 [64, 64, 3], "caption": str, "captions": [str, ...], "labels": {...}, "id": 0}
    val = DemoWorld.split("val")
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from openslip.data.demo.captions import alternative_captions, training_caption
from openslip.data.demo.render import render_scene
from openslip.data.demo.scene import DemoScene, sample_scene, scene_labels
from openslip.data.formats.records import Record
from openslip.data.sources import SOURCE_FORMATS
from openslip.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Nominal number of samples per split; the world is unbounded, this only fixes len() and an epoch.
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 100_000, "val": 5_000, "test": 5_000}


@dataclass(kw_only=True)
class DemoWorldConfig:
    """Configuration of the demo world; (seed, split, index) fully determines a sample."""

    seed: int = 0  # base seed of the world (>= 0); a different seed is a different world
    image_size: int = 64  # side of the square images in pixels
    size: int | None = None  # number of samples in the split; None takes DEFAULT_SPLIT_SIZES[split]
    split: str = "train"  # one of SPLITS; each split is a separate random stream
    noise_prob: float = 0.2  # probability that the training caption is web-like noise instead of a clean one
    two_object_prob: float = 0.3  # probability of a scene with two objects and a spatial relation
    num_captions: int = 5  # clean alternative captions per sample (``captions``), for retrieval

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"demo world split {self.split!r} is unknown; choose one of: {', '.join(SPLITS)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"demo world seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ConfigError(f"demo world image_size must be an integer >= 8, got {self.image_size!r}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise ConfigError(f"demo world size must be a positive integer, got {self.size!r}")
        for name in ("noise_prob", "two_object_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"demo world {name} must be in [0, 1], got {value!r}")
        if not isinstance(self.num_captions, int) or self.num_captions < 0:
            raise ConfigError(f"demo world num_captions must be an integer >= 0, got {self.num_captions!r}")


def stream_id(name: str) -> int:
    """A stable 32-bit id for a named random stream, e.g. "world/train" or "task/demo_shapes/test"."""
    return zlib.crc32(name.encode("utf-8"))


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    # One generator per sample. The scene takes its draws first and the text after it, so a change to the
    # caption grammar leaves every image unchanged.
    return np.random.default_rng([seed, stream, index])


def make_scene(
    seed: int, stream: int, index: int, *, two_object_prob: float, force: Mapping[str, int] | None = None
) -> DemoScene:
    """The scene of sample ``index`` of a stream (what ``generate_sample`` renders)."""
    return sample_scene(_rng(seed, stream, index), two_object_prob=two_object_prob, force=force)


def generate_sample(
    seed: int,
    stream: int,
    index: int,
    *,
    image_size: int = 64,
    noise_prob: float = 0.2,
    two_object_prob: float = 0.3,
    num_captions: int = 5,
    force: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One sample of a stream: image, training caption (maybe noisy), clean alternatives, labels.

    ``force`` fixes attributes of a single object (see ``sample_scene``); the evaluation tasks use it
    to draw balanced classes.
    """
    rng = _rng(seed, stream, index)
    scene = sample_scene(rng, two_object_prob=two_object_prob, force=force)
    caption, kind = training_caption(scene, rng, noise_prob)
    return {
        "image": render_scene(scene, image_size),
        "caption": caption,
        "captions": alternative_captions(scene, rng, num_captions) if num_captions else [],
        "labels": scene_labels(scene),
        "caption_kind": kind,
        "id": index,
    }


class DemoWorld:
    """A split of the demo world as a map-style dataset: ``len(world)`` and ``world[i]`` (a dict)."""

    def __init__(self, config: DemoWorldConfig | None = None, **overrides: Any) -> None:
        config = config or DemoWorldConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self._stream = stream_id(f"world/{self.config.split}")

    @classmethod
    def split(cls, name: str, config: DemoWorldConfig | None = None, **overrides: Any) -> DemoWorld:
        """The world's ``name`` split ("train", "val" or "test"), other settings from ``config``."""
        base = config or DemoWorldConfig()
        # A size set for one split does not carry over to another (train is much larger than val/test).
        size = overrides.pop("size", base.size if base.split == name else None)
        return cls(dataclasses.replace(base, split=name, size=size, **overrides))

    def with_split(self, name: str) -> DemoWorld:
        """This world's settings on another split (its default size unless the split is the same)."""
        return DemoWorld.split(name, self.config)

    def __len__(self) -> int:
        cfg = self.config
        return cfg.size if cfg.size is not None else DEFAULT_SPLIT_SIZES[cfg.split]

    def _check(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"demo world index {index} out of range for a split of {n} samples")
        return int(index) % n

    def scene(self, index: int) -> DemoScene:
        """The scene behind sample ``index`` (for debugging, masks via ``render_scene``)."""
        cfg = self.config
        return make_scene(cfg.seed, self._stream, self._check(index), two_object_prob=cfg.two_object_prob)

    def sample(self, index: int) -> dict[str, Any]:
        """Sample ``index``: image uint8 [H, W, 3], caption, captions, labels (ints), caption_kind, id."""
        cfg = self.config
        return generate_sample(
            cfg.seed,
            self._stream,
            self._check(index),
            image_size=cfg.image_size,
            noise_prob=cfg.noise_prob,
            two_object_prob=cfg.two_object_prob,
            num_captions=cfg.num_captions,
        )

    __getitem__ = sample

    def record(self, index: int) -> Record:
        """Sample ``index`` as a data-source ``Record`` for the training loader: the training caption now,
        the image rendered when the loader decodes it (in its worker)."""
        cfg = self.config
        index = self._check(index)
        rng = _rng(cfg.seed, self._stream, index)
        scene = sample_scene(rng, two_object_prob=cfg.two_object_prob)
        caption, _ = training_caption(scene, rng, cfg.noise_prob)
        image = functools.partial(_pil_image, scene, cfg.image_size)  # a partial pickles, a lambda would not
        return Record(id=f"demo/{cfg.split}/{index}", image=image, captions=[caption])

    def __repr__(self) -> str:
        cfg = self.config
        return f"DemoWorld(split={cfg.split!r}, size={len(self)}, seed={cfg.seed}, image_size={cfg.image_size})"


def benchmark_demo_world(n: int = 2000, *, image_size: int = 64, num_captions: int = 5, warmup: int = 50) -> float:
    """Samples (image + captions + labels) generated per second on the calling thread."""
    world = DemoWorld(DemoWorldConfig(image_size=image_size, num_captions=num_captions, size=n + warmup))
    for i in range(warmup):
        world.sample(i)
    start = time.perf_counter()
    for i in range(warmup, warmup + n):
        world.sample(i)
    return n / (time.perf_counter() - start)


def _pil_image(scene: DemoScene, image_size: int) -> Image.Image:
    return Image.fromarray(render_scene(scene, image_size))


def open_demo_source(path: str | None = None, **options: Any) -> DemoWorld:
    """Opener of the "demo" data format: ``demo``, ``demo:val`` (a split) or ``demo?seed=1&image_size=32``.

    Options are ``DemoWorldConfig`` fields; string values (from a spec) are converted to the field's type.
    """
    fields = {f.name: f for f in dataclasses.fields(DemoWorldConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(f"unknown demo world option {key!r}; choose one of: {', '.join(fields)}")
        default = fields[key].default
        kind = float if isinstance(default, float) else (str if isinstance(default, str) else int)
        try:
            kwargs[key] = kind(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"demo world option {key}={value!r} is not a valid {kind.__name__}") from None
    if path:
        kwargs["split"] = path
    return DemoWorld(DemoWorldConfig(**kwargs))


SOURCE_FORMATS.register("demo", open_demo_source)
