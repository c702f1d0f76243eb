"""Vocabulary and scene sampling of the built-in demo world.

A scene is pure data (one or two coloured, textured shapes on a background, in normalised image
coordinates); rendering lives in ``demo_render`` and captions in ``demo_captions``. Every attribute is
an index into one of the vocabularies below, which are also the class names of the demo evaluation
tasks, so their order is part of the public contract: append, never reorder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "heart")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white")
# Palette RGB; the smallest distance between two entries (orange-yellow, 82) exceeds twice the largest
# jitter displacement (sqrt(3) * COLOUR_JITTER), so a jittered colour stays nearest to its own name.
COLOUR_RGB: tuple[tuple[int, int, int], ...] = (
    (215, 40, 40),
    (240, 135, 25),
    (240, 215, 45),
    (45, 165, 70),
    (45, 90, 220),
    (135, 65, 185),
    (240, 125, 185),
    (240, 240, 240),
)
COLOUR_JITTER = 20.0
SIZES: tuple[str, ...] = ("small", "large")
# Radius (of the circle that holds the shape) in units of the image side, per size class.
SIZE_RADIUS: tuple[tuple[float, float], ...] = ((0.11, 0.15), (0.21, 0.26))
POSITIONS: tuple[str, ...] = (
    "centre",
    "left",
    "right",
    "top",
    "bottom",
    "top left",
    "top right",
    "bottom left",
    "bottom right",
)
# Grid cell (column, row) in {-1, 0, 1}^2 of each position; image y grows downwards.
POSITION_CELL: tuple[tuple[int, int], ...] = (
    (0, 0),
    (-1, 0),
    (1, 0),
    (0, -1),
    (0, 1),
    (-1, -1),
    (1, -1),
    (-1, 1),
    (1, 1),
)
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise")
TONES: tuple[str, ...] = ("dark", "light")
# Relation of the first object to the second in two-object scenes.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

# Colours too bright to read on a light background (luminance > 170) always get a dark one.
_NEEDS_DARK = tuple(0.299 * r + 0.587 * g + 0.114 * b > 170 for r, g, b in COLOUR_RGB)
_MARGIN = 0.03  # gap kept between a shape and the image border, in image sides
_SHIFT = 0.25  # distance of the off-centre grid cells from the centre, in image sides
_POS_JITTER = 0.04


@dataclass(frozen=True)
class DemoObject:
    """One shape: class indices plus the continuous parameters that make each instance unique."""

    shape: int
    colour: int
    size: int
    position: int
    texture: int
    rgb: tuple[float, float, float]
    cx: float  # centre, in image sides from the left edge
    cy: float  # centre, in image sides from the top edge
    radius: float  # in image sides
    angle: float  # rotation in radians
    texture_angle: float  # stripe direction, radians
    texture_period: float  # pattern period, in image sides


@dataclass(frozen=True)
class DemoScene:
    """A background and one or two objects; ``relation`` is -1 for single-object scenes."""

    objects: tuple[DemoObject, ...]
    background: int
    tone: int
    bg_rgb: tuple[tuple[float, float, float], tuple[float, float, float]]  # two tones (gradient ends)
    bg_angle: float
    noise_seed: int
    relation: int = -1


def _pick(rng: np.random.Generator, n: int) -> int:
    # rng.random() is several times cheaper than rng.integers() for a single draw.
    return int(rng.random() * n)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * rng.random()


def _jitter_rgb(rng: np.random.Generator, colour: int) -> tuple[float, float, float]:
    jit = (rng.random(3) * 2.0 - 1.0) * COLOUR_JITTER
    r, g, b = (min(255.0, max(0.0, c + float(j))) for c, j in zip(COLOUR_RGB[colour], jit, strict=True))
    return (r, g, b)


def position_class(cx: float, cy: float) -> int:
    """The named position (index into POSITIONS) of a point: per axis, below 0.4, 0.4-0.6, or above 0.6."""
    col = -1 if cx < 0.4 else (1 if cx > 0.6 else 0)
    row = -1 if cy < 0.4 else (1 if cy > 0.6 else 0)
    return POSITION_CELL.index((col, row))


def _make_object(
    rng: np.random.Generator, attrs: Mapping[str, int], cx: float, cy: float, *, size: int | None = None
) -> DemoObject:
    shape = attrs["shape"] if "shape" in attrs else _pick(rng, len(SHAPES))
    colour = attrs["colour"] if "colour" in attrs else _pick(rng, len(COLOURS))
    size = size if size is not None else (attrs["size"] if "size" in attrs else _pick(rng, len(SIZES)))
    texture = attrs["texture"] if "texture" in attrs else _pick(rng, len(TEXTURES))
    radius = _uniform(rng, *SIZE_RADIUS[size])
    lo, hi = radius + _MARGIN, 1.0 - radius - _MARGIN
    cx, cy = min(hi, max(lo, cx)), min(hi, max(lo, cy))
    # Rotation stays within +-15 degrees so that a square never turns into a diamond; stars are 5-fold.
    angle = _uniform(rng, -np.pi, np.pi) if SHAPES[shape] == "star" else _uniform(rng, -0.26, 0.26)
    return DemoObject(
        shape=shape,
        colour=colour,
        size=size,
        position=position_class(cx, cy),
        texture=texture,
        rgb=_jitter_rgb(rng, colour),
        cx=cx,
        cy=cy,
        radius=radius,
        angle=angle,
        texture_angle=_pick(rng, 4) * np.pi / 4,
        texture_period=_uniform(rng, 0.07, 0.1),
    )


def _background_rgb(rng: np.random.Generator, tone: int) -> tuple[float, float, float]:
    base = _uniform(rng, 15.0, 75.0) if TONES[tone] == "dark" else _uniform(rng, 175.0, 235.0)
    tint = (rng.random(3) * 2.0 - 1.0) * 15.0
    r, g, b = (base + float(t) for t in tint)
    return (r, g, b)


def sample_scene(
    rng: np.random.Generator, *, two_object_prob: float = 0.3, force: Mapping[str, int] | None = None
) -> DemoScene:
    """Draw a scene; ``force`` fixes attributes of the (first) object by name, e.g. ``{"shape": 3}``.

    Forcing any attribute gives a single-object scene, as the evaluation tasks need. Bright colours
    (yellow, white) always get a dark background, whatever ``tone`` asks.
    Accepted keys: shape, colour, size, position, texture, background, tone.
    """
    force = dict(force or {})
    unknown = set(force) - {"shape", "colour", "size", "position", "texture", "background", "tone"}
    if unknown:
        raise ValueError(f"unknown demo scene attribute(s) {sorted(unknown)}")
    two = not force and rng.random() < two_object_prob
    objects: list[DemoObject] = []
    relation = -1
    if not two:
        position = force["position"] if "position" in force else _pick(rng, len(POSITIONS))
        col, row = POSITION_CELL[position]
        cx = 0.5 + _SHIFT * col + _uniform(rng, -_POS_JITTER, _POS_JITTER)
        cy = 0.5 + _SHIFT * row + _uniform(rng, -_POS_JITTER, _POS_JITTER)
        # Grid cells sit at 0.25 / 0.5 / 0.75 (+-0.04) and clamping stops at 0.29 / 0.71, so the label stays `position`.
        objects.append(_make_object(rng, force, cx, cy))
    else:
        relation = _pick(rng, len(RELATIONS))
        # The first object goes on the named side; the other coordinate takes a random grid row (column),
        # like single objects, so that every position label is clear of the 0.4 / 0.6 borders. At most one
        # object is large, so that the two never overlap.
        sign = -1.0 if RELATIONS[relation] in ("left of", "above") else 1.0
        size_a = _pick(rng, len(SIZES))
        size_b = 0 if size_a == 1 else _pick(rng, len(SIZES))
        for k, size in enumerate((size_a, size_b)):
            main = 0.5 + (sign if k == 0 else -sign) * _SHIFT + _uniform(rng, -_POS_JITTER, _POS_JITTER)
            free = 0.5 + _SHIFT * (_pick(rng, 3) - 1) + _uniform(rng, -_POS_JITTER, _POS_JITTER)
            cx, cy = (main, free) if RELATIONS[relation] in ("left of", "right of") else (free, main)
            objects.append(_make_object(rng, {}, cx, cy, size=size))
    tone = force["tone"] if "tone" in force else _pick(rng, len(TONES))
    if any(_NEEDS_DARK[o.colour] for o in objects):
        tone = TONES.index("dark")
    background = force["background"] if "background" in force else _pick(rng, len(BACKGROUNDS))
    bg_rgb = (_background_rgb(rng, tone), _background_rgb(rng, tone))
    return DemoScene(
        objects=tuple(objects),
        background=background,
        tone=tone,
        bg_rgb=bg_rgb,
        bg_angle=_uniform(rng, -np.pi, np.pi),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        relation=relation,
    )


def scene_labels(scene: DemoScene) -> dict[str, int]:
    """Integer labels of a scene; the second object's entries are -1 in single-object scenes."""
    first = scene.objects[0]
    second = scene.objects[1] if len(scene.objects) > 1 else None
    labels = {
        "shape": first.shape,
        "colour": first.colour,
        "size": first.size,
        "position": first.position,
        "texture": first.texture,
        "background": scene.background,
        "tone": scene.tone,
        "n_objects": len(scene.objects),
        "relation": scene.relation,
    }
    for key in ("shape", "colour", "size", "position", "texture"):
        labels[f"{key}2"] = getattr(second, key) if second is not None else -1
    return labels
