"""Rendering of demo-world scenes into uint8 images, vectorised in numpy.

Every shape is a signed distance function (negative inside, in pixels) evaluated on the pixel centres
of the shape's bounding box only; coverage = clip(0.5 - distance, 0, 1) gives one pixel of
anti-aliasing at any resolution without supersampling. A 64 px image costs a few dozen array
operations on small arrays (well under a millisecond); the code avoids the slow ufuncs (hypot, mod)
and allocates little, because this runs once per training sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from openslip.data.demo.scene import BACKGROUNDS, SHAPES, TEXTURES, DemoObject, DemoScene

Array = np.ndarray
_SQRT2 = math.sqrt(2.0)
_TWO_PI = 2.0 * math.pi


@lru_cache(maxsize=16)
def _pixel_centres(size: int) -> Array:
    """Pixel-centre coordinates in pixels (0.5, 1.5, ...), shared by rows and columns (read-only)."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    grid.setflags(write=False)
    return grid


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> Array:
    """Fixed Gaussian colour noise (std 16) of twice the image side; a noisy background is a window of it
    chosen by the scene's noise seed, which costs one addition instead of drawing size*size*3 normals."""
    bank = np.random.default_rng(20211220).standard_normal((3, 2 * size, 2 * size), dtype=np.float32) * 16.0
    bank.setflags(write=False)
    return bank


def _length(u: Array, v: Array) -> Array:
    return np.sqrt(u * u + v * v)  # several times faster than np.hypot on small float32 arrays


# --- signed distance functions in the object's frame (u right, v down), radius r, all in pixels ---


def _circle(u: Array, v: Array, r: float) -> Array:
    d = _length(u, v)
    d -= r
    return d


def _square(u: Array, v: Array, r: float) -> Array:
    # Half side 0.72 r keeps the corners of a square rotated by 15 degrees inside ~1.02 r.
    d = np.maximum(np.abs(u), np.abs(v))
    d -= 0.72 * r
    return d


def _triangle(u: Array, v: Array, r: float) -> Array:
    # Equilateral, apex up, circumradius 1.1 r: three half-planes at inradius 0.55 r.
    su = 0.8660254 * u
    hv = 0.5 * v
    d = np.maximum(np.maximum(v, su - hv), -su - hv)
    d -= 0.55 * r
    return d


# Star: outer and inner vertex radii (in r) and the outward normal of the edge between them in the
# folded half-sector, as an angle: with the folded point p = rho (cos f, sin f) and unit normal
# n = (cos b, sin b), the distance n.(p - outer vertex) is rho cos(f - b) - cos(b) * outer.
_STAR_OUTER, _STAR_INNER = 1.1, 0.495
_STAR_EDGE = (_STAR_INNER * math.cos(math.pi / 5) - _STAR_OUTER, _STAR_INNER * math.sin(math.pi / 5))
_STAR_BETA = math.atan2(-_STAR_EDGE[0], _STAR_EDGE[1])
_SECTOR = _TWO_PI / 5


def _star(u: Array, v: Array, r: float) -> Array:
    # Fold the plane into one half-sector of the 5-fold star (angle 0 = up): f = |angle mod 72 deg - 36 deg|,
    # with floor instead of np.mod, which is an order of magnitude slower.
    f = np.arctan2(u, -v)
    f += math.pi / 5
    f -= np.floor(f * (1.0 / _SECTOR)) * _SECTOR
    f -= math.pi / 5
    np.abs(f, out=f)
    f -= _STAR_BETA
    d = _length(u, v)
    d *= np.cos(f, out=f)
    d -= math.cos(_STAR_BETA) * _STAR_OUTER * r
    return d


def _ring(u: Array, v: Array, r: float) -> Array:
    d = _length(u, v)
    d -= 0.78 * r
    np.abs(d, out=d)
    d -= 0.22 * r
    return d


def _cross(u: Array, v: Array, r: float) -> Array:
    au, av = np.abs(u), np.abs(v)
    long, short = 1.0 * r, 0.3 * r
    return np.minimum(np.maximum(au - long, av - short), np.maximum(au - short, av - long))


def _diamond(u: Array, v: Array, r: float) -> Array:
    # A rhombus taller than wide, so that it is not a rotated square.
    a, b = 0.68 * r, 1.05 * r
    k = 1.0 / math.hypot(a, b)
    d = np.abs(u) * (b * k) + np.abs(v) * (a * k)
    d -= a * b * k
    return d


def _heart(u: Array, v: Array, r: float) -> Array:
    # A square standing on a corner plus two discs on its upper edges, centred vertically.
    dd = 0.8 * r
    c = 0.1035 * dd
    au = np.abs(u)
    corner = (au + np.abs(v - c) - dd) * (1.0 / _SQRT2)
    lobes = _length(au - 0.5 * dd, v - (c - 0.5 * dd))
    lobes -= dd / _SQRT2
    return np.minimum(corner, lobes, out=corner)


SDF: dict[str, Callable[[Array, Array, float], Array]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "ring": _ring,
    "cross": _cross,
    "diamond": _diamond,
    "heart": _heart,
}
assert tuple(SDF) == SHAPES, "SDF table must follow the SHAPES vocabulary"
_SDF_LIST = tuple(SDF.values())
_EXTENT = 1.16  # every shape above fits in a disc of 1.16 r, rotated or not


def _pattern(obj: DemoObject, u: Array, v: Array, size: int) -> Array | None:
    """Texture in [0, 1] (1 = darker second tone) in the object's frame, or None for plain."""
    name = TEXTURES[obj.texture]
    if name == "plain":
        return None
    period = obj.texture_period * size
    k = _TWO_PI / period
    ca, sa = math.cos(obj.texture_angle) * k, math.sin(obj.texture_angle) * k
    s = ca * u + sa * v  # phase across the stripes, radians
    if name == "striped":
        pat = np.sin(s)
        pat *= 3.0
    elif name == "checkered":
        t = ca * v - sa * u
        pat = np.sin(s * 0.5)
        pat *= np.sin(t * 0.5)
        pat *= 4.0
    else:  # dotted: distance to the nearest lattice point, in periods
        t = ca * v - sa * u
        s *= 1.0 / _TWO_PI
        t *= 1.0 / _TWO_PI
        s -= np.rint(s)
        t -= np.rint(t)
        pat = _length(s, t)
        np.subtract(0.28, pat, out=pat)
        pat *= period
    pat += 0.5
    return np.clip(pat, 0.0, 1.0, out=pat)


def _draw_object(canvas: Array, obj: DemoObject, size: int) -> tuple[slice, slice, Array]:
    """Composite one object onto ``canvas`` (float32 [3, H, W], in place); returns its box and coverage."""
    grid = _pixel_centres(size)
    cx, cy, r = obj.cx * size, obj.cy * size, obj.radius * size
    ext = _EXTENT * r + 1.5
    x0, x1 = max(0, int(cx - ext)), min(size, math.ceil(cx + ext))
    y0, y1 = max(0, int(cy - ext)), min(size, math.ceil(cy + ext))
    dx = (grid[x0:x1] - cx)[None, :]
    dy = (grid[y0:y1] - cy)[:, None]
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    u = c * dx + s * dy
    v = c * dy - s * dx
    cover = _SDF_LIST[obj.shape](u, v, r)
    np.subtract(0.5, cover, out=cover)
    np.clip(cover, 0.0, 1.0, out=cover)
    rgb = np.array(obj.rgb, dtype=np.float32)[:, None, None]
    pat = _pattern(obj, u, v, size)
    if pat is None:
        colour = rgb
    else:
        pat *= -0.5
        pat += 1.0
        colour = pat * rgb
    region = canvas[:, y0:y1, x0:x1]
    region += cover * (colour - region)
    return slice(y0, y1), slice(x0, x1), cover


def _background(scene: DemoScene, size: int) -> Array:
    """The background as float32 [3, H, W]: channel-first, because numpy is slow on a last axis of 3."""
    rgb0 = np.array(scene.bg_rgb[0], dtype=np.float32)[:, None, None]
    name = BACKGROUNDS[scene.background]
    if name == "gradient":
        grid = _pixel_centres(size)
        rgb1 = np.array(scene.bg_rgb[1], dtype=np.float32)[:, None, None]
        k = 1.0 / (_SQRT2 * size)
        c, s = math.cos(scene.bg_angle) * k, math.sin(scene.bg_angle) * k
        t = (grid * c - (0.5 * size * c - 0.5))[None, :] + (grid * s - 0.5 * size * s)[:, None]
        return t * (rgb1 - rgb0) + rgb0
    if name == "noise":
        oy, ox = divmod(scene.noise_seed % (size + 1) ** 2, size + 1)
        return _noise_bank(size)[:, oy : oy + size, ox : ox + size] + rgb0
    canvas = np.empty((3, size, size), dtype=np.float32)
    canvas[...] = rgb0
    return canvas


def render_scene(scene: DemoScene, image_size: int = 64, *, return_masks: bool = False) -> Array | tuple[Array, Array]:
    """Render a scene as uint8 [image_size, image_size, 3]; with ``return_masks`` also the float32
    coverage [n_objects, image_size, image_size] of each object (1 inside, 0 outside)."""
    canvas = _background(scene, image_size)
    boxes = [_draw_object(canvas, obj, image_size) for obj in scene.objects]
    if BACKGROUNDS[scene.background] == "noise":  # the only source of values outside [0, 255]
        np.clip(canvas, 0.0, 255.0, out=canvas)
    planes = canvas.astype(np.uint8)
    image = np.stack((planes[0], planes[1], planes[2]), axis=-1)  # faster than a transposed copy
    if not return_masks:
        return image
    masks = np.zeros((len(boxes), image_size, image_size), dtype=np.float32)
    for mask, (rows, cols, cover) in zip(masks, boxes, strict=True):
        mask[rows, cols] = cover
    return image, masks
