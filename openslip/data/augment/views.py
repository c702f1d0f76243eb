"""SLIP augmentations: the per-sample CPU path; the recipe and its random parameters are in `params.py`.

Three views come from one decoded image: ``image`` (the CLIP view: RandomResizedCrop, scale 0.5-1) and
``view1`` / ``view2`` (the SimCLR views: RandomResizedCrop 0.08-1, ColorJitter(0.4, 0.4, 0.4, 0.1)
with p=0.8 in a random order, RandomGrayscale p=0.2, PIL GaussianBlur sigma ~ U(0.1, 2) with p=0.5,
horizontal flip p=0.5), all normalised with the ImageNet mean and std (docs/DESIGN.md, 'Augmentations').

Everything random is drawn first into a :class:`ViewParams` record (``params.py``), then
rendered. The per-sample path here (:class:`SLIPTransform`, for loader workers) and the batched path
in ``batched.py`` (for the training device) share the recipe, the layout of the uniform draws
and the colour operations (``color.py``), so the same ``ViewParams`` give the same pixels on both paths
up to rounding.

Speed (figures in docs/PERFORMANCE.md): the image is converted to an array once; each crop is resized straight to the
target size on uint8 by torch's antialiased bilinear kernel (PIL's filter, to within one grey level);
jitter, greyscale and blur then run on [3, S, S] float tensors only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from openslip.data.augment import color
from openslip.data.augment.params import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOCAL,
    N_UNIFORMS,
    VIEW_NAMES,
    AugmentConfig,
    CropBox,
    ViewParams,
    check_views,
    resolve_config,
    view_params_from_uniforms,
)
from openslip.errors import ConfigError

# --- Input conversion --------------------------------------------------------------------------------


def to_rgb_uint8(image: Image.Image | np.ndarray | Tensor) -> np.ndarray:
    """A decoded image as a C-contiguous [H, W, 3] uint8 array.

    PIL images of any mode are converted to RGB like the reference (``convert("RGB")``: alpha is
    dropped, palettes and greyscale expanded); 16- and 32-bit integer greyscale is scaled to 8 bits.
    Arrays may be [H, W], [H, W, 1|3|4] uint8; tensors [1|3|4, H, W] uint8. Anything else is a TypeError.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            arr = (np.asarray(image).astype(np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # avoids PIL's warning for palette transparency
        if image.mode != "RGB":
            image = image.convert("RGB")
        arr = np.asarray(image)
    elif isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            raise TypeError(f"expected a uint8 tensor [3, H, W], got {image.dtype} {tuple(image.shape)}")
        arr = image.detach().cpu().permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise TypeError(f"expected a PIL image, a uint8 array or tensor, got {type(image).__name__}")
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise TypeError(f"expected an image array [H, W] or [H, W, 1|3|4], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def source_tensor(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    """[1, 3, H, W] uint8 view (channels-last strides) of the image's RGB array, without a further copy."""
    arr = to_rgb_uint8(image)
    with warnings.catch_warnings():  # PIL arrays are read-only; we never write to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


# --- Rendering ----------------------------------------------------------------------------------------


def resize_crop_uint8(src: Tensor, box: CropBox, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Crop ``box`` of ``src`` [1, 3, H, W] uint8 and resize it to ``size`` with an antialiased ``mode``
    ("bilinear" or "bicubic").

    torch's uint8 antialias kernels implement PIL's filters (support scaled when downscaling), matching
    ``img.crop(box).resize(size, BILINEAR or BICUBIC)`` to within a grey level or two.
    """
    top, left, h, w = box
    crop = src[:, :, top : top + h, left : left + w]
    if (h, w) == tuple(size):
        return crop
    return F.interpolate(crop, size=size, mode=mode, antialias=True, align_corners=False)


def _channel_tensors(config: AugmentConfig) -> tuple[Tensor, Tensor]:
    return torch.tensor(config.mean).view(3, 1, 1), torch.tensor(config.std).view(3, 1, 1)


def render_view(src: Tensor, params: ViewParams, size: int, mean: Tensor, std: Tensor) -> Tensor:
    """One normalised view [3, size, size] float32 of ``src`` [1, 3, H, W] uint8 with ``params``."""
    y = resize_crop_uint8(src, params.crop, (size, size))[0]
    if params.flip:  # flipping commutes with every later op (the blur is symmetric), and uint8 is cheapest
        y = y.flip(-1)
    x = torch.empty(y.shape, dtype=torch.float32).copy_(y).div_(255.0)
    if params.jitter:
        factors = params.factors
        for op in params.order:
            if factors[op] != color.NEUTRAL_FACTORS[op]:
                x = color.JITTER_OPS[op](x, factors[op])
    if params.gray:
        x = color.grayscale(x)
    if params.blur and params.sigma > 0:
        x = color.gaussian_blur(x, params.sigma)
    return color.normalize(x, mean, std)


def apply_view(
    image: Image.Image | np.ndarray | Tensor,
    params: ViewParams,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Render one view [3, S, S] float32 of a decoded image with given parameters (the CPU path)."""
    src = source_tensor(image)
    return render_view(src, params, image_size, torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1))


class SLIPTransform:
    """The SLIP views of one image, for loader workers; one decode feeds all views
    (docs/DESIGN.md, 'Two paths, one distribution').

    ``SLIPTransform(224)(pil_image)`` -> ``{"image": [3, 224, 224], "view1": ..., "view2": ...}`` float32.
    ``views`` names the views to render (a CLIP-only run needs ``("image",)``, SimCLR-only
    ``("view1", "view2")``); the parameters of all three are drawn either way, so a view of a baseline is
    the same view the SLIP run with that seed sees. Randomness comes from ``generator`` or, when it is
    None, torch's global RNG (which DataLoader seeds per worker). All draws of a sample happen in one call,
    so a seeded generator makes it reproducible.
    """

    def __init__(
        self, image_size: int | None = None, *, config: AugmentConfig | None = None, views: Sequence[str] = VIEW_NAMES
    ) -> None:
        self.config = resolve_config(image_size, config)
        self.views = check_views(views)
        self._mean, self._std = _channel_tensors(self.config)

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None) -> dict[str, ViewParams]:
        """Parameters of the three views of an image of ``height`` x ``width``."""
        u = torch.rand(len(VIEW_NAMES), N_UNIFORMS, dtype=torch.float64, generator=generator).tolist()
        return {
            name: view_params_from_uniforms(height, width, u[i], self.config.recipe(name))
            for i, name in enumerate(VIEW_NAMES)
        }

    def apply(self, image: Image.Image | np.ndarray | Tensor, params: dict[str, ViewParams]) -> dict[str, Tensor]:
        """Render the views named in ``params`` with the given parameters."""
        src = source_tensor(image)
        size = self.config.image_size
        return {name: render_view(src, p, size, self._mean, self._std) for name, p in params.items()}

    def __call__(
        self, image: Image.Image | np.ndarray | Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        src = source_tensor(image)
        params = self.sample_params(src.shape[2], src.shape[3], generator)
        size = self.config.image_size
        out = {
            name: render_view(src, params[name], size, self._mean, self._std) for name in self.views if name != LOCAL
        }
        if LOCAL in self.views:
            # drawn after the three views, so the views of a sample are those of a run without local crops
            out[LOCAL] = self.render_locals(src, generator)
        return out

    def render_locals(self, src: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The local crops of ``src`` [1, 3, H, W] uint8: [N, 3, s, s] float32 (N, s: the config's local_crops and
        local_size)."""
        cfg = self.config
        if cfg.local_crops < 1:
            raise ConfigError("the view 'local' needs local_crops >= 1 in the augmentation config")
        height, width = src.shape[2], src.shape[3]
        u = torch.rand(cfg.local_crops, N_UNIFORMS, dtype=torch.float64, generator=generator).tolist()
        crops = [view_params_from_uniforms(height, width, row, cfg.local_view) for row in u]
        return torch.stack([render_view(src, p, cfg.local_size, self._mean, self._std) for p in crops])


def eval_resize_size(height: int, width: int, image_size: int, crop_fraction: float = 0.875) -> tuple[int, int]:
    """torchvision ``Resize(floor(image_size / crop_fraction))``: shorter side to that size, aspect kept."""
    short_target = int(math.floor(image_size / crop_fraction))
    if height <= width:
        return short_target, int(short_target * width / height)
    return int(short_target * height / width), short_target


EVAL_INTERPOLATIONS = ("bilinear", "bicubic")


class EvalTransform:
    """Evaluation preprocessing, torchvision's ``Resize(floor(S / crop_fraction)) -> CenterCrop(S)``, normalised.

    ``crop_fraction`` 1.0 resizes the shorter side to S itself (the reference's zero-shot transform), 0.875 to
    256 for S = 224 (its linear probe's, and BEiT's with ``interpolation="bicubic"``); None takes the config's.
    """

    def __init__(
        self,
        image_size: int | None = None,
        *,
        config: AugmentConfig | None = None,
        crop_fraction: float | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        self.config = resolve_config(image_size, config)
        if crop_fraction is not None:
            self.config = replace(self.config, eval_crop_fraction=crop_fraction)  # checked by AugmentConfig
        if interpolation not in EVAL_INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(EVAL_INTERPOLATIONS)}, got {interpolation!r}")
        self.interpolation = interpolation
        self._mean, self._std = _channel_tensors(self.config)

    @property
    def key(self) -> str:
        """What the output depends on besides the image (feature caches are keyed by it)."""
        return f"resize-crop:{self.config.image_size}:{self.config.eval_crop_fraction}:{self.interpolation}"

    def __call__(self, image: Image.Image | np.ndarray | Tensor) -> Tensor:
        src = source_tensor(image)
        size = self.config.image_size
        rh, rw = eval_resize_size(src.shape[2], src.shape[3], size, self.config.eval_crop_fraction)
        resized = resize_crop_uint8(src, (0, 0, src.shape[2], src.shape[3]), (rh, rw), self.interpolation)
        # torchvision CenterCrop offsets; the resized image is never smaller than the crop (crop_fraction <= 1).
        top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
        y = resized[0, :, top : top + size, left : left + size]
        x = torch.empty(y.shape, dtype=torch.float32).copy_(y).div_(255.0)
        return color.normalize(x, self._mean, self._std)
