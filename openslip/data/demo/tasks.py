"""Labelled evaluation tasks on the demo world: zero-shot classification, linear probing, retrieval.

A task classifies single-object scenes by one attribute (or a combination, e.g. colour and shape) and
comes with class names and CLIP-style prompt templates. Classes are balanced by construction (image
``i`` has label ``i % num_classes``), the other attributes vary as in pre-training, and each
(task, split) is its own random stream, disjoint from the pre-training images. The "train" split of
a task is for fitting linear probes; "val" for choosing their regularisation; "test" for reporting.

    task = demo_task("demo_shapes", split="test")
    image, label = task[0]        # uint8 [64, 64, 3], int
    prompts = [t.format(c) for c in task.classnames for t in task.templates]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from openslip.data.demo.scene import COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES
from openslip.data.demo.world import SPLITS, generate_sample, stream_id
from openslip.errors import ConfigError
from openslip.registry import Registry

DEFAULT_TASK_SIZES: dict[str, int] = {"train": 4096, "val": 1024, "test": 1024}


@dataclass(frozen=True)
class DemoTaskSpec:
    """What a task classifies, its class names and its prompt templates."""

    name: str
    attributes: tuple[str, ...]  # scene attributes forming the class; the first varies slowest
    classnames: tuple[str, ...]
    templates: tuple[str, ...]  # format strings with one "{}" for the class name
    description: str

    def force(self, label: int) -> dict[str, int]:
        """The attribute values of class ``label`` (what the scene sampler is told to draw)."""
        sizes = [len(_VOCAB[a]) for a in self.attributes]
        values: dict[str, int] = {}
        for attr, n in zip(reversed(self.attributes), reversed(sizes), strict=True):
            label, values[attr] = divmod(label, n)
        return values


_VOCAB: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "texture": TEXTURES,
    "size": SIZES,
    "position": POSITIONS,
}

DEMO_TASKS: Registry[DemoTaskSpec] = Registry("demo task")


def _register(name: str, attributes: tuple[str, ...], templates: tuple[str, ...], description: str) -> None:
    combos = itertools.product(*(_VOCAB[a] for a in attributes))
    classnames = tuple(" ".join(words) for words in combos)
    DEMO_TASKS.register(name, DemoTaskSpec(name, attributes, classnames, templates, description))


# Templates follow the CLIP prompt style and the phrasings of the caption grammar; those for colours
# avoid an article before the class name ("a orange ...").
_register(
    "demo_shapes",
    ("shape",),
    (
        "a photo of a {}.",
        "a {}.",
        "a picture of a {}.",
        "an image showing a {}.",
        "there is a {} here.",
        "a {} shape.",
        "a small {}.",
        "a large {}.",
    ),
    "shape of the single object (8 classes)",
)
_register(
    "demo_colours",
    ("colour",),
    (
        "something {}.",
        "a shape coloured {}.",
        "the shape is {}.",
        "a photo of something {}.",
        "{} object.",
        "{} thing.",
    ),
    "colour of the single object (8 classes)",
)
_register(
    "demo_shape_colour",
    ("colour", "shape"),
    (
        "{}.",
        "the {}.",
        "a photo of the {}.",
        "{}, on a dark background.",
        "{}, on a light background.",
        "the {} in the image.",
    ),
    "colour and shape of the single object (64 classes)",
)
_register(
    "demo_textures",
    ("texture",),
    ("a {} shape.", "a photo of a {} shape.", "a {} object.", "a picture of a {} thing."),
    "texture of the single object: plain, striped, dotted, checkered (4 classes)",
)
_register(
    "demo_sizes",
    ("size",),
    ("a {} shape.", "a photo of a {} shape.", "a {} object.", "there is a {} thing here."),
    "size of the single object: small or large (2 classes)",
)
_register(
    "demo_positions",
    ("position",),
    ("a shape at the {}.", "an object in the {}.", "a photo of a shape at the {}.", "something at the {}."),
    "position of the single object in a 3x3 grid (9 classes)",
)


def demo_task_names() -> list[str]:
    """Names of the demo evaluation tasks."""
    return DEMO_TASKS.names()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"demo split {split!r} is unknown; choose one of: {', '.join(SPLITS)}")


class DemoTask:
    """A labelled split of one task: ``len(task)``, ``task[i] -> (image uint8 [H, W, 3], label)``."""

    def __init__(
        self, spec: DemoTaskSpec, split: str = "test", n: int | None = None, *, seed: int = 0, image_size: int = 64
    ) -> None:
        _check_split(split)
        self.spec, self.split, self.seed, self.image_size = spec, split, seed, image_size
        self.n = DEFAULT_TASK_SIZES[split] if n is None else n
        if self.n < 1:
            raise ConfigError(f"demo task size must be positive, got {self.n}")
        self._stream = stream_id(f"task/{spec.name}/{split}")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def classnames(self) -> list[str]:
        """Class names; the index of a name is its label."""
        return list(self.spec.classnames)

    @property
    def templates(self) -> list[str]:
        """Prompt templates, each with one "{}" for a class name."""
        return list(self.spec.templates)

    @property
    def num_classes(self) -> int:
        return len(self.spec.classnames)

    def __len__(self) -> int:
        return self.n

    def label(self, index: int) -> int:
        """The class of image ``index`` (balanced: every class once per ``num_classes`` images)."""
        if not 0 <= index < self.n:
            raise IndexError(f"demo task index {index} out of range for {self.n} images")
        return index % self.num_classes

    def labels(self) -> np.ndarray:
        """All labels, int64 [n], without rendering."""
        return np.arange(self.n, dtype=np.int64) % self.num_classes

    def sample(self, index: int) -> dict[str, Any]:
        """The full sample behind image ``index`` (image, captions, all labels), as ``DemoWorld`` gives."""
        label = self.label(index)
        return generate_sample(
            self.seed, self._stream, index, image_size=self.image_size, num_captions=0, force=self.spec.force(label)
        )

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.sample(index)["image"], self.label(index)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image and label: uint8 [n, H, W, 3] and int64 [n] (for linear probes and quick evals)."""
        images = np.stack([self.sample(i)["image"] for i in range(self.n)])
        return images, self.labels()

    def __repr__(self) -> str:
        return f"DemoTask({self.name!r}, split={self.split!r}, n={self.n}, classes={self.num_classes})"


def demo_task(name: str, split: str = "test", n: int | None = None, *, seed: int = 0, image_size: int = 64) -> DemoTask:
    """A demo evaluation task by name (see ``demo_task_names()``); ``n`` defaults per split."""
    return DemoTask(DEMO_TASKS.get(name), split, n, seed=seed, image_size=image_size)


@dataclass
class DemoRetrieval:
    """Images with several clean captions each, for image-to-text and text-to-image retrieval."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    captions: list[list[str]]  # captions[i] describe images[i]

    def flat(self) -> tuple[list[str], np.ndarray]:
        """All captions in one list, and the image index of each (int64), as retrieval metrics need."""
        texts = [c for caps in self.captions for c in caps]
        owner = np.repeat(np.arange(len(self.captions), dtype=np.int64), [len(c) for c in self.captions])
        return texts, owner


def demo_retrieval(
    split: str = "test", n: int = 1000, *, seed: int = 0, image_size: int = 64, captions_per_image: int = 5
) -> DemoRetrieval:
    """A retrieval set of ``n`` demo-world scenes (one or two objects), each with clean detailed captions."""
    _check_split(split)
    if n < 1 or captions_per_image < 1:
        raise ConfigError("demo retrieval needs n >= 1 and captions_per_image >= 1")
    stream = stream_id(f"retrieval/{split}")
    samples = [
        generate_sample(seed, stream, i, image_size=image_size, num_captions=captions_per_image) for i in range(n)
    ]
    return DemoRetrieval(np.stack([s["image"] for s in samples]), [s["captions"] for s in samples])
