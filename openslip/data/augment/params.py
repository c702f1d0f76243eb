"""SLIP augmentation recipe and its random parameters, shared by the per-sample and batched paths.

Everything random about a view is drawn into a :class:`ViewParams` record before any pixel is touched,
so tests can check the distributions of the parameters, and the two rendering paths (``views.py``,
``batched.py``) can be compared on identical parameters. Both samplers turn the same fixed
layout of U[0, 1) draws into parameters (``view_params_from_uniforms`` and its vectorised twin), so the
same uniforms give the same parameters on both paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from openslip.data.augment import color
from openslip.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIEW_NAMES = ("image", "view1", "view2")  # CLIP view, then the two SimCLR views
# The local crops of self-distillation (loss.ssl=distill), [N, 3, s, s] per sample, beside the views above
LOCAL = "local"

CropBox = tuple[int, int, int, int]  # (top, left, height, width) in source pixels


def _check_range(name: str, lo_hi: tuple[float, float], lo: float, hi: float | None = None) -> None:
    a, b = lo_hi
    if not (lo <= a <= b and (hi is None or b <= hi)):
        bounds = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be (low, high) with low <= high, both in {bounds}; got {lo_hi}")


@dataclass(frozen=True, kw_only=True)
class ViewRecipe:
    """How one view is augmented (torchvision semantics, as in the SLIP reference)."""

    scale: tuple[float, float]
    """RandomResizedCrop area range, as fractions of the image area."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """RandomResizedCrop aspect-ratio (width / height) range, sampled log-uniformly."""
    flip_p: float = 0.0
    """Probability of a horizontal flip."""
    jitter_p: float = 0.0
    """Probability of applying ColorJitter."""
    brightness: float = 0.4
    """ColorJitter brightness strength b: factor ~ U(max(0, 1 - b), 1 + b)."""
    contrast: float = 0.4
    """ColorJitter contrast strength: factor ~ U(max(0, 1 - c), 1 + c)."""
    saturation: float = 0.4
    """ColorJitter saturation strength: factor ~ U(max(0, 1 - s), 1 + s)."""
    hue: float = 0.1
    """ColorJitter hue strength h <= 0.5: shift ~ U(-h, h) turns."""
    gray_p: float = 0.0
    """Probability of RandomGrayscale."""
    blur_p: float = 0.0
    """Probability of the Gaussian blur."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Blur sigma range (PIL GaussianBlur radius), sampled uniformly."""

    def __post_init__(self) -> None:
        _check_range("scale", self.scale, 0.0, 1.0)
        if self.scale[1] <= 0:
            raise ConfigError(f"scale must allow a non-empty crop, got {self.scale}")
        _check_range("ratio", self.ratio, 0.0)
        if self.ratio[0] <= 0:
            raise ConfigError(f"ratio must be positive, got {self.ratio}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(f"hue must be in [0, 0.5], got {self.hue}")
        _check_range("blur_sigma", self.blur_sigma, 0.0)


CLIP_VIEW = ViewRecipe(scale=(0.5, 1.0))
SIMCLR_VIEW = ViewRecipe(scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.5)
# DINO's local crops (Caron et al. 2021): 5-40 % of the image, at 96 px for 224 px global views, with the colour
# recipe of the global views. The global views of loss.ssl=distill are the SimCLR views above, so a distillation run
# sees the same global views as the SLIP run of its seed (docs/OBJECTIVES.md).
LOCAL_VIEW = ViewRecipe(scale=(0.05, 0.4), flip_p=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.5)
LOCAL_SIZE_FRACTION = 96 / 224


def local_crop_size(image_size: int, patch_size: int) -> int:
    """The side of the local crops for global views of `image_size`: DINO's 96 / 224 of it, rounded to whole patches
    (at least one), so the ViT takes them with its position embedding interpolated."""
    return max(patch_size, round(image_size * LOCAL_SIZE_FRACTION / patch_size) * patch_size)


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """The SLIP augmentation recipe (docs/DESIGN.md, 'Augmentations'); the defaults are the reference's."""

    image_size: int = 224
    """Output side in pixels (224 for the paper's models, 32-64 for tiny demo models)."""
    clip_view: ViewRecipe = field(default=CLIP_VIEW)
    """Recipe of the CLIP view ``image``."""
    ssl_view: ViewRecipe = field(default=SIMCLR_VIEW)
    """Recipe of the two SimCLR views ``view1`` and ``view2``."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean subtracted after scaling to [0, 1]."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation divided by after subtracting the mean."""
    eval_crop_fraction: float = 0.875
    """Evaluation: resize the shorter side to image_size / this, then centre-crop image_size."""
    local_view: ViewRecipe = field(default=LOCAL_VIEW)
    """Recipe of the local crops (view ``local``)."""
    local_crops: int = 0
    """Local crops per sample when the view ``local`` is asked for."""
    local_size: int = 96
    """Side of the local crops in pixels."""

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError(f"image_size must be a positive int, got {self.image_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")
        if not 0.0 < self.eval_crop_fraction <= 1.0:
            raise ConfigError(f"eval_crop_fraction must be in (0, 1], got {self.eval_crop_fraction}")
        if self.local_crops < 0 or self.local_size < 1:
            raise ConfigError(
                f"local_crops must be >= 0 and local_size >= 1, got {self.local_crops}, {self.local_size}"
            )

    def recipe(self, view: str) -> ViewRecipe:
        """The recipe of a view name in :data:`VIEW_NAMES`."""
        return self.clip_view if view == "image" else self.ssl_view


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """``views`` as a tuple in :data:`VIEW_NAMES` order (then ``local``); a ValueError for an unknown or empty
    selection."""
    known = (*VIEW_NAMES, LOCAL)
    unknown = [v for v in views if v not in known]
    if unknown or not views:
        raise ValueError(f"views must be a non-empty subset of {known}, got {tuple(views)}")
    return tuple(v for v in known if v in views)


def resolve_config(image_size: int | None, config: AugmentConfig | None) -> AugmentConfig:
    """``config`` (default: the reference recipe) with ``image_size`` overridden when given."""
    config = config if config is not None else AugmentConfig()
    return config if image_size is None else replace(config, image_size=image_size)


@dataclass(frozen=True)
class ViewParams:
    """Everything random about one view of one sample; rendering it is deterministic."""

    crop: CropBox
    """(top, left, height, width) of the crop in source pixels."""
    flip: bool = False
    """Horizontal flip."""
    jitter: bool = False
    """Whether ColorJitter is applied (when False the factors are neutral)."""
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    """Hue shift in turns."""
    order: tuple[int, int, int, int] = (0, 1, 2, 3)
    """Order of the jitter operations (0 brightness, 1 contrast, 2 saturation, 3 hue)."""
    gray: bool = False
    blur: bool = False
    sigma: float = 0.0
    """Blur sigma (0 when ``blur`` is False)."""

    @property
    def factors(self) -> tuple[float, float, float, float]:
        """Jitter factors indexed by operation id."""
        return (self.brightness, self.contrast, self.saturation, self.hue)


# Layout of the U[0, 1) draws of one view (both samplers use it):
CROP_TRIES = 10  # torchvision's RandomResizedCrop: up to 10 rejection-sampling tries, then a centre crop
U_CROP = 0  # CROP_TRIES x (area, log-ratio, top, left)
U_FLIP = 4 * CROP_TRIES
U_JITTER = U_FLIP + 1
U_FACTORS = U_JITTER + 1  # brightness, contrast, saturation, hue
U_ORDER = U_FACTORS + 4  # four sort keys: their argsort is a uniformly random permutation
U_GRAY = U_ORDER + 4
U_BLUR = U_GRAY + 1
U_SIGMA = U_BLUR + 1
N_UNIFORMS = U_SIGMA + 1


def centre_crop_fallback(height: int, width: int, ratio: tuple[float, float]) -> CropBox:
    """RandomResizedCrop's fallback: the whole image, clamped to the ratio range, centred."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_from_uniforms(
    height: int, width: int, u: Sequence[float], scale: tuple[float, float], ratio: tuple[float, float]
) -> CropBox:
    """RandomResizedCrop's rejection sampling from ``4 * CROP_TRIES`` uniforms (torchvision's algorithm).

    Per try: area ~ U(scale) * H * W, log aspect ~ U(log ratio), w = round(sqrt(area * r)),
    h = round(sqrt(area / r)); the first box with 0 < w <= W and 0 < h <= H is placed uniformly.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(CROP_TRIES):
        a = area * (scale[0] + (scale[1] - scale[0]) * u[4 * t])
        r = math.exp(log_lo + (log_hi - log_lo) * u[4 * t + 1])
        w = round(math.sqrt(a * r))  # Python's round: half to even, like torch.round
        h = round(math.sqrt(a / r))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[4 * t + 2] * (height - h + 1)), height - h)
            left = min(int(u[4 * t + 3] * (width - w + 1)), width - w)
            return top, left, h, w
    return centre_crop_fallback(height, width, ratio)


def sample_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> CropBox:
    """A RandomResizedCrop box (top, left, height, width) for an image of ``height`` x ``width``."""
    u = torch.rand(4 * CROP_TRIES, dtype=torch.float64, generator=generator).tolist()
    return crop_from_uniforms(height, width, u, scale, ratio)


def jitter_ranges(recipe: ViewRecipe) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(low, high) of the brightness, contrast, saturation factors and the hue shift (torchvision's ranges)."""
    strengths = (recipe.brightness, recipe.contrast, recipe.saturation)
    lo = tuple(max(0.0, 1.0 - s) for s in strengths) + (-recipe.hue,)
    hi = tuple(1.0 + s for s in strengths) + (recipe.hue,)
    return lo, hi


def view_params_from_uniforms(height: int, width: int, u: Sequence[float], recipe: ViewRecipe) -> ViewParams:
    """Turn ``N_UNIFORMS`` U[0, 1) draws into the parameters of one view."""
    crop = crop_from_uniforms(height, width, u[U_CROP : U_CROP + 4 * CROP_TRIES], recipe.scale, recipe.ratio)
    jitter = u[U_JITTER] < recipe.jitter_p
    factors, order = color.NEUTRAL_FACTORS, (0, 1, 2, 3)
    if jitter:
        lo, hi = jitter_ranges(recipe)
        factors = tuple(lo[i] + (hi[i] - lo[i]) * u[U_FACTORS + i] for i in range(4))
        keys = u[U_ORDER : U_ORDER + 4]
        order = tuple(sorted(range(4), key=keys.__getitem__))
    blur = u[U_BLUR] < recipe.blur_p
    lo, hi = recipe.blur_sigma
    return ViewParams(
        crop=crop,
        flip=u[U_FLIP] < recipe.flip_p,
        jitter=jitter,
        brightness=factors[0],
        contrast=factors[1],
        saturation=factors[2],
        hue=factors[3],
        order=order,
        gray=u[U_GRAY] < recipe.gray_p,
        blur=blur,
        sigma=lo + (hi - lo) * u[U_SIGMA] if blur else 0.0,
    )


def sample_view_params(
    height: int, width: int, recipe: ViewRecipe, generator: torch.Generator | None = None
) -> ViewParams:
    """Random parameters of one view of an image of ``height`` x ``width``."""
    u = torch.rand(N_UNIFORMS, dtype=torch.float64, generator=generator).tolist()
    return view_params_from_uniforms(height, width, u, recipe)
