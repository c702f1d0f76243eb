"""RandAugment and random erasing for finetuning (BEiT's recipe), on torch tensors, without torchvision.

BEiT (Bao et al. 2022, App. D) finetunes with timm's policy ``rand-m9-mstd0.5-inc1`` followed by random
erasing (``reprob 0.25``, mode ``pixel``). This module implements both with the same semantics:

- :class:`RandAugment`: per image, ``num_ops`` operations drawn with replacement from the "increasing"
  op set (every op gets stronger as the magnitude grows), each applied with probability 0.5 at a
  magnitude ``N(magnitude, magnitude_std)`` clipped to [0, 10]; ops with a signed argument (rotate,
  shear, translate, the enhance factors) flip its sign with probability 0.5. Geometric ops fill with
  the ImageNet mean pixel (124, 116, 104), as BEiT passes timm ``img_mean``.
- :class:`RandomErasing`: with probability ``prob`` one box of area U(0.02, 1/3) of the image and
  log-uniform aspect ratio in [0.3, 1/0.3] is replaced by per-pixel N(0, 1) noise (applied after
  normalisation, so the noise is "pixels" of the normalised image); up to 10 tries to fit the box.

The ops work on float images in [0, 1] ``[3, H, W]``; :class:`RandAugment` also takes uint8 images and
then rounds to a grey level after every op, as PIL does. Bilinear sampling and float arithmetic keep the
results within about a grey level of timm's PIL ops (timm also picks bicubic at random, we do not).
Randomness comes from ``generator`` or, when it is None, torch's global RNG (which finetuning seeds
per sample from (seed, epoch, index)).

    ra = parse_randaug("rand-m9-mstd0.5-inc1")      # == RandAugment(num_ops=2, magnitude=9, magnitude_std=0.5)
    img = ra(img_uint8_chw, generator=g)
    x = RandomErasing(0.25)(normalised, generator=g)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from openslip.data.augment import color
from openslip.errors import ConfigError
from openslip.registry import Registry

FILL = (124, 116, 104)  # round(255 * ImageNet mean): the fill of BEiT's geometric ops
MAX_LEVEL = 10.0  # timm's magnitude scale: "m9" is 9 of 10

# --- the ops: image [3, H, W] float in [0, 1], one argument -> image -----------------------------------


def _warp(img: Tensor, matrix: tuple[float, float, float, float, float, float], fill: tuple[int, ...]) -> Tensor:
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f))``: output pixel (x, y) samples the input at
    (a x + b y + c, d x + e y + f), pixel centres at +0.5; bilinear, outside the image ``fill``."""
    a, b, c, d, e, f = matrix
    h, w = img.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=img.dtype, device=img.device) + 0.5,
        torch.arange(w, dtype=img.dtype, device=img.device) + 0.5,
        indexing="ij",
    )
    sx, sy = a * xs + b * ys + c, d * xs + e * ys + f
    # grid_sample with align_corners=False puts pixel centres at (i + 0.5) / size * 2 - 1, as here
    grid = torch.stack((sx * (2 / w) - 1, sy * (2 / h) - 1), dim=-1)[None]
    fill_t = torch.tensor(fill, dtype=img.dtype, device=img.device).view(3, 1, 1) / 255
    # sampling (img - fill) with zero padding and adding fill back fills the outside with ``fill``
    out = F.grid_sample((img - fill_t)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out[0] + fill_t).clamp_(0.0, 1.0)


def auto_contrast(img: Tensor, _: float = 0.0) -> Tensor:
    """Stretch each channel to the full range (PIL ``ImageOps.autocontrast``); flat channels unchanged."""
    lo = img.amin(dim=(-2, -1), keepdim=True)
    hi = img.amax(dim=(-2, -1), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1.0 / (hi - lo).clamp_min(1e-12))
    return torch.where(flat, img, (img - lo) * scale).clamp_(0.0, 1.0)


def equalize(img: Tensor, _: float = 0.0) -> Tensor:
    """Per-channel histogram equalisation over 256 grey levels (PIL ``ImageOps.equalize``'s lookup table)."""
    levels = (img * 255).round_().clamp_(0, 255).long()
    out = img.clone()
    for ch in range(img.shape[0]):
        hist = torch.bincount(levels[ch].flatten(), minlength=256)
        used = hist[hist > 0]
        step = int(used.sum() - used[-1]) // 255  # PIL leaves out the count of the highest level present
        if step == 0:
            continue
        lut = (torch.cumsum(hist, 0) - hist + step // 2) // step
        out[ch] = lut.clamp_(max=255)[levels[ch]].to(img.dtype) / 255
    return out


def invert(img: Tensor, _: float = 0.0) -> Tensor:
    return 1.0 - img


def rotate(img: Tensor, degrees: float, fill: tuple[int, ...] = FILL) -> Tensor:
    """Counter-clockwise about the centre (PIL ``Image.rotate``)."""
    t = math.radians(degrees)
    cos, sin = math.cos(t), math.sin(t)
    h, w = img.shape[-2:]
    cx, cy = w / 2, h / 2
    # input = R(-t) (output - centre) + centre, in image coordinates (y down)
    return _warp(img, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy), fill)


def shear_x(img: Tensor, factor: float, fill: tuple[int, ...] = FILL) -> Tensor:
    return _warp(img, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(img: Tensor, factor: float, fill: tuple[int, ...] = FILL) -> Tensor:
    return _warp(img, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x_rel(img: Tensor, fraction: float, fill: tuple[int, ...] = FILL) -> Tensor:
    """Shift by ``fraction`` of the width."""
    return _warp(img, (1.0, 0.0, fraction * img.shape[-1], 0.0, 1.0, 0.0), fill)


def translate_y_rel(img: Tensor, fraction: float, fill: tuple[int, ...] = FILL) -> Tensor:
    """Shift by ``fraction`` of the height."""
    return _warp(img, (1.0, 0.0, 0.0, 0.0, 1.0, fraction * img.shape[-2]), fill)


def posterize(img: Tensor, bits: float) -> Tensor:
    """Keep the ``bits`` most significant bits of every 8-bit level (0 bits: black)."""
    if bits >= 8:
        return img
    step = 2 ** (8 - int(bits))
    return torch.floor((img * 255).round_() / step).mul_(step / 255)


def solarize(img: Tensor, threshold: float) -> Tensor:
    """Invert the levels >= ``threshold`` (of 256); 256 leaves the image unchanged."""
    return torch.where(img * 255 >= threshold, 1.0 - img, img)


def solarize_add(img: Tensor, add: float) -> Tensor:
    """Add ``add`` grey levels to the levels below 128, clipped."""
    return torch.where(img * 255 < 128, (img + add / 255).clamp_(max=1.0), img)


def color_op(img: Tensor, factor: float) -> Tensor:
    """Saturation: blend with the luma (PIL ``ImageEnhance.Color``)."""
    return color.adjust_saturation(img, factor)


def contrast(img: Tensor, factor: float) -> Tensor:
    """Blend with the mean luma (PIL ``ImageEnhance.Contrast``)."""
    return color.adjust_contrast(img, factor)


def brightness(img: Tensor, factor: float) -> Tensor:
    """Blend with black (PIL ``ImageEnhance.Brightness``)."""
    return color.adjust_brightness(img, factor)


def sharpness(img: Tensor, factor: float) -> Tensor:
    """Blend with PIL's SMOOTH filter (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, over 13); the border stays as is."""
    if img.shape[-1] < 3 or img.shape[-2] < 3:
        return img
    kernel = torch.ones(3, 1, 3, 3, dtype=img.dtype, device=img.device)
    kernel[:, :, 1, 1] = 5
    smooth = img.clone()
    smooth[:, 1:-1, 1:-1] = F.conv2d(img[None], kernel / 13, groups=3)[0]
    return torch.lerp(smooth, img, factor).clamp_(0.0, 1.0)


# --- the registry: op + how the magnitude level (0..10) maps to its argument -------------------------


@dataclass(frozen=True)
class Op:
    """An op and its argument at a magnitude level in [0, MAX_LEVEL] (``sign`` is +-1, drawn 50/50)."""

    fn: Callable[[Tensor, float], Tensor]
    arg: Callable[[float, float], float]
    identity_at_zero: bool
    """Whether level 0 leaves the image unchanged (tests check it)."""


def _fraction(level: float) -> float:
    return level / MAX_LEVEL


def _enhance_arg(level: float, sign: float) -> float:
    return 1.0 + sign * 0.9 * _fraction(level)  # factor in [0.1, 1.9]; 1 at level 0


OPS: Registry[Op] = Registry("RandAugment op")
OPS.register("AutoContrast", Op(auto_contrast, lambda m, s: 0.0, identity_at_zero=False))
OPS.register("Equalize", Op(equalize, lambda m, s: 0.0, identity_at_zero=False))
OPS.register("Invert", Op(invert, lambda m, s: 0.0, identity_at_zero=False))
OPS.register("Rotate", Op(rotate, lambda m, s: s * 30.0 * _fraction(m), identity_at_zero=True))
# "Increasing" posterize keeps 4 bits at level 0 and none at level 10; solarize's threshold falls 256 -> 0.
OPS.register("PosterizeIncreasing", Op(posterize, lambda m, s: 4 - int(4 * _fraction(m)), identity_at_zero=False))
OPS.register("SolarizeIncreasing", Op(solarize, lambda m, s: 256 - int(256 * _fraction(m)), identity_at_zero=True))
OPS.register("SolarizeAdd", Op(solarize_add, lambda m, s: int(110 * _fraction(m)), identity_at_zero=True))
OPS.register("ColorIncreasing", Op(color_op, _enhance_arg, identity_at_zero=True))
OPS.register("ContrastIncreasing", Op(contrast, _enhance_arg, identity_at_zero=True))
OPS.register("BrightnessIncreasing", Op(brightness, _enhance_arg, identity_at_zero=True))
OPS.register("SharpnessIncreasing", Op(sharpness, _enhance_arg, identity_at_zero=True))
OPS.register("ShearX", Op(shear_x, lambda m, s: s * 0.3 * _fraction(m), identity_at_zero=True))
OPS.register("ShearY", Op(shear_y, lambda m, s: s * 0.3 * _fraction(m), identity_at_zero=True))
OPS.register("TranslateXRel", Op(translate_x_rel, lambda m, s: s * 0.45 * _fraction(m), identity_at_zero=True))
OPS.register("TranslateYRel", Op(translate_y_rel, lambda m, s: s * 0.45 * _fraction(m), identity_at_zero=True))

# timm's _RAND_INCREASING_TRANSFORMS, in its order (the op index drawn refers to this order).
INCREASING_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


class RandAugment:
    """``num_ops`` random ops per image at magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10].

    Takes a uint8 [3, H, W] image (returns uint8, rounded after every op) or a float one in [0, 1].
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.5,
        *,
        prob: float = 0.5,
        ops: tuple[str, ...] = INCREASING_OPS,
    ) -> None:
        if num_ops < 0 or not 0 <= magnitude <= MAX_LEVEL or magnitude_std < 0 or not 0 <= prob <= 1:
            raise ConfigError(
                f"RandAugment: need num_ops >= 0, 0 <= magnitude <= {MAX_LEVEL:g}, magnitude_std >= 0, "
                f"0 <= prob <= 1; got {num_ops}, {magnitude}, {magnitude_std}, {prob}"
            )
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
        for name in ops:
            OPS.canonical(name)  # an unknown name raises here
        self.ops = tuple(ops)

    def sample(self, generator: torch.Generator | None = None) -> list[tuple[str, float]]:
        """The (op name, argument) pairs to apply, in order; ops that lost their coin flip are left out.

        Every call makes the same draws (op index, coin, magnitude noise, sign per slot), whatever is applied.
        """
        k = self.num_ops
        index = torch.randint(len(self.ops), (k,), generator=generator).tolist()
        u = torch.rand(k, 2, dtype=torch.float64, generator=generator).tolist()
        noise = torch.randn(k, dtype=torch.float64, generator=generator).tolist()
        plan = []
        for i in range(k):
            if u[i][0] >= self.prob:
                continue
            level = min(max(self.magnitude + self.magnitude_std * noise[i], 0.0), MAX_LEVEL)
            name = self.ops[index[i]]
            plan.append((name, OPS.get(name).arg(level, 1.0 if u[i][1] < 0.5 else -1.0)))
        return plan

    def apply(self, img: Tensor, plan: list[tuple[str, float]]) -> Tensor:
        """Apply a plan from :meth:`sample` to a uint8 or [0, 1] float image [3, H, W]."""
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"RandAugment expects an image [3, H, W], got {tuple(img.shape)}")
        is_uint8 = img.dtype == torch.uint8
        x = img.float() / 255 if is_uint8 else img
        for name, arg in plan:
            x = OPS.get(name).fn(x, arg)
            if is_uint8:
                x = (x * 255).round_().div_(255)
        return (x * 255).round_().clamp_(0, 255).to(torch.uint8) if is_uint8 else x.to(img.dtype)

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(img, self.sample(generator))

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, magnitude_std={self.magnitude_std})"


def parse_randaug(policy: str | None) -> RandAugment | None:
    """A timm-style policy string ``rand-m9-mstd0.5-inc1`` (parts: m magnitude, n ops, mstd noise std, p op
    probability, inc1 the increasing op set) -> RandAugment; None / "" / "none" -> None (off)."""
    if policy is None or policy.strip().lower() in ("", "none", "off"):
        return None
    parts = policy.strip().lower().split("-")
    if parts[0] != "rand":
        raise ConfigError(f"RandAugment policy {policy!r}: must start with 'rand-' (e.g. rand-m9-mstd0.5-inc1)")
    kwargs: dict[str, float] = {}
    increasing = False
    for part in parts[1:]:
        key = next((k for k in ("mstd", "inc", "m", "n", "p") if part.startswith(k)), None)
        try:
            value = float(part[len(key) :]) if key else math.nan
        except ValueError:
            value = math.nan
        if key is None or math.isnan(value):
            known = "m<level>, n<ops>, mstd<std>, p<prob>, inc1"
            raise ConfigError(f"RandAugment policy {policy!r}: unknown part {part!r} (known: {known})")
        if key == "inc":
            increasing = value == 1
        else:
            kwargs[key] = value
    if not increasing:
        raise ConfigError(f"RandAugment policy {policy!r}: only the increasing op set is implemented (add -inc1)")
    if kwargs.get("n", 2) != int(kwargs.get("n", 2)):
        raise ConfigError(f"RandAugment policy {policy!r}: n must be a whole number of ops")
    return RandAugment(
        num_ops=int(kwargs.get("n", 2)),
        magnitude=kwargs.get("m", 9.0),
        magnitude_std=kwargs.get("mstd", 0.5),
        prob=kwargs.get("p", 0.5),
    )


# --- random erasing -----------------------------------------------------------------------------------


class RandomErasing:
    """With probability ``prob``, one box of the (normalised) image becomes per-pixel N(0, 1) noise.

    Box: area U(min_area, max_area) of the image, aspect ratio log-uniform in [min_aspect, 1 / min_aspect];
    up to ``tries`` draws until it fits strictly inside the image, else nothing is erased (timm's rule).
    """

    def __init__(
        self, prob: float = 0.25, *, min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3
    ) -> None:
        if not 0 <= prob <= 1 or not 0 < min_area <= max_area <= 1 or not 0 < min_aspect <= 1:
            raise ConfigError(
                f"random erasing: need 0 <= prob <= 1, 0 < min_area <= max_area <= 1, 0 < min_aspect <= 1; got "
                f"{prob}, {min_area}, {max_area}, {min_aspect}"
            )
        self.prob, self.min_area, self.max_area = prob, min_area, max_area
        self.log_aspect = (math.log(min_aspect), -math.log(min_aspect))
        self.tries = 10

    def sample_box(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, ...] | None:
        """(top, left, h, w) of the box to erase, or None; always the same number of draws."""
        u = torch.rand(1 + 4 * self.tries, dtype=torch.float64, generator=generator).tolist()
        if u[0] >= self.prob:
            return None
        for t in range(self.tries):
            a, r, y, x = u[1 + 4 * t : 5 + 4 * t]
            area = height * width * (self.min_area + (self.max_area - self.min_area) * a)
            aspect = math.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * r)
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < h < height and 0 < w < width:
                return int(y * (height - h + 1)), int(x * (width - w + 1)), h, w
        return None

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Erase in a copy of ``img`` [C, H, W] float (already normalised)."""
        box = self.sample_box(img.shape[-2], img.shape[-1], generator)
        if box is None:
            return img
        top, left, h, w = box
        img = img.clone()
        noise = torch.randn((img.shape[0], h, w), dtype=torch.float32, generator=generator)
        img[:, top : top + h, left : left + w] = noise.to(img.dtype)
        return img

    def __repr__(self) -> str:
        return f"RandomErasing(prob={self.prob}, area=({self.min_area}, {self.max_area:.3f}), mode='pixel')"
