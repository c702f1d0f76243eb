"""The SLIP augmentations on a whole batch on the training device, with per-sample random parameters.

Same recipe, same uniform-draw layout and same colour operations as the per-sample path
(``views.py``), vectorised over the batch (docs/DESIGN.md, 'Two paths, one distribution'):

- crops: torchvision's rejection sampling with all 10 tries drawn at once per sample, the first valid
  box taken, else the centre fallback (no clamping, so the box distribution is the reference's);
- crop + resize: PIL's antialiased bilinear filter written as two per-sample resampling matrices,
  ``out = Wy @ image @ Wx^T`` (batched matmuls), rounded to uint8 levels like the CPU path; the flip
  is folded into ``Wx``. On a CPU device the per-sample uint8 resize of the CPU path is used instead
  (the dense matmuls cost ~0.5 GFLOP per 224 px view of a 500 x 375 image: nothing for a GPU, a lot
  for one core);
- jitter: for each of the 4 positions of the random order, each operation runs on the samples that
  have it there (index lists computed on the host from the CPU-side parameters, so no device sync);
- grey / blur: on the selected samples, the blur with one PIL kernel per sample.

Parameters are always drawn on the CPU (a CPU ``torch.Generator``), so a seed gives the same views on
every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from openslip.data.augment import color
from openslip.data.augment.params import (
    CROP_TRIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOCAL,
    N_UNIFORMS,
    U_BLUR,
    U_FACTORS,
    U_FLIP,
    U_GRAY,
    U_JITTER,
    U_ORDER,
    U_SIGMA,
    VIEW_NAMES,
    AugmentConfig,
    ViewParams,
    ViewRecipe,
    check_views,
    jitter_ranges,
    resolve_config,
)
from openslip.data.augment.views import resize_crop_uint8


@dataclass
class ViewParamsBatch:
    """:class:`ViewParams` of B samples as CPU tensors (one row per sample)."""

    crop: Tensor  # [B, 4] int64: top, left, height, width
    flip: Tensor  # [B] bool
    jitter: Tensor  # [B] bool
    factors: Tensor  # [B, 4] float64: brightness, contrast, saturation, hue (neutral when jitter is False)
    order: Tensor  # [B, 4] int64: jitter operation ids in application order
    gray: Tensor  # [B] bool
    blur: Tensor  # [B] bool
    sigma: Tensor  # [B] float64 (0 when blur is False)

    def __len__(self) -> int:
        return self.crop.shape[0]

    def __getitem__(self, i: int) -> ViewParams:
        b, c, s, h = self.factors[i].tolist()
        return ViewParams(
            crop=tuple(self.crop[i].tolist()),
            flip=bool(self.flip[i]),
            jitter=bool(self.jitter[i]),
            brightness=b,
            contrast=c,
            saturation=s,
            hue=h,
            order=tuple(self.order[i].tolist()),
            gray=bool(self.gray[i]),
            blur=bool(self.blur[i]),
            sigma=float(self.sigma[i]),
        )

    def to_list(self) -> list[ViewParams]:
        return [self[i] for i in range(len(self))]

    @classmethod
    def from_list(cls, params: Sequence[ViewParams]) -> ViewParamsBatch:
        """Stack per-sample records (e.g. to render CPU-path parameters with the batched path)."""
        return cls(
            crop=torch.tensor([p.crop for p in params], dtype=torch.int64).reshape(-1, 4),
            flip=torch.tensor([p.flip for p in params], dtype=torch.bool),
            jitter=torch.tensor([p.jitter for p in params], dtype=torch.bool),
            factors=torch.tensor([p.factors for p in params], dtype=torch.float64).reshape(-1, 4),
            order=torch.tensor([p.order for p in params], dtype=torch.int64).reshape(-1, 4),
            gray=torch.tensor([p.gray for p in params], dtype=torch.bool),
            blur=torch.tensor([p.blur for p in params], dtype=torch.bool),
            sigma=torch.tensor([p.sigma for p in params], dtype=torch.float64),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ViewParamsBatch):
            return NotImplemented
        return all(torch.equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))


def _as_size_tensor(sizes: Tensor | Sequence[int]) -> Tensor:
    return torch.as_tensor(sizes, dtype=torch.float64).reshape(-1)


def crop_from_uniforms_batch(
    heights: Tensor | Sequence[int],
    widths: Tensor | Sequence[int],
    u: Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> Tensor:
    """Vectorised :func:`openslip.data.augment.params.crop_from_uniforms`: ``u`` [B, 4 * CROP_TRIES] -> boxes [B, 4]."""
    H, W = _as_size_tensor(heights)[:, None], _as_size_tensor(widths)[:, None]
    u = u.to(torch.float64).reshape(-1, CROP_TRIES, 4)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    area = H * W * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    r = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * r))  # half to even, like Python's round()
    h = torch.round(torch.sqrt(area / r))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # [B, tries]
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # the first accepted try (argmax returns the first max)

    def pick(t: Tensor) -> Tensor:
        return t.gather(1, first).squeeze(1)

    h, w, H, W = pick(h), pick(w), H.squeeze(1), W.squeeze(1)
    top = torch.minimum(torch.floor(pick(u[..., 2]) * (H - h + 1)), H - h)
    left = torch.minimum(torch.floor(pick(u[..., 3]) * (W - w + 1)), W - w)
    # Centre fallback when all tries fail: the whole image clamped to the ratio range.
    in_ratio = W / H
    fb_w = torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W)
    fb_h = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    fb = torch.stack([torch.floor((H - fb_h) / 2), torch.floor((W - fb_w) / 2), fb_h, fb_w], dim=1)
    box = torch.stack([top, left, h, w], dim=1)
    return torch.where(ok.any(dim=1, keepdim=True), box, fb).to(torch.int64)


def sample_crop_params_batch(
    heights: Tensor | Sequence[int],
    widths: Tensor | Sequence[int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """RandomResizedCrop boxes [B, 4] (top, left, height, width), one per (height, width)."""
    n = _as_size_tensor(heights).shape[0]
    u = torch.rand(n, 4 * CROP_TRIES, dtype=torch.float64, generator=generator)
    return crop_from_uniforms_batch(heights, widths, u, scale, ratio)


def view_params_from_uniforms_batch(
    heights: Tensor | Sequence[int], widths: Tensor | Sequence[int], u: Tensor, recipe: ViewRecipe
) -> ViewParamsBatch:
    """Vectorised :func:`openslip.data.augment.params.view_params_from_uniforms`: ``u`` [B, N_UNIFORMS]."""
    u = u.to(torch.float64)
    crop = crop_from_uniforms_batch(heights, widths, u[:, : 4 * CROP_TRIES], recipe.scale, recipe.ratio)
    jitter = u[:, U_JITTER] < recipe.jitter_p
    lo, hi = (torch.tensor(v, dtype=torch.float64) for v in jitter_ranges(recipe))
    factors = lo + (hi - lo) * u[:, U_FACTORS : U_FACTORS + 4]
    neutral = torch.tensor(color.NEUTRAL_FACTORS, dtype=torch.float64)
    factors = torch.where(jitter[:, None], factors, neutral)
    order = torch.argsort(u[:, U_ORDER : U_ORDER + 4], dim=1)
    order = torch.where(jitter[:, None], order, torch.arange(4))
    blur = u[:, U_BLUR] < recipe.blur_p
    s_lo, s_hi = recipe.blur_sigma
    sigma = torch.where(blur, s_lo + (s_hi - s_lo) * u[:, U_SIGMA], 0.0)
    return ViewParamsBatch(
        crop=crop,
        flip=u[:, U_FLIP] < recipe.flip_p,
        jitter=jitter,
        factors=factors,
        order=order,
        gray=u[:, U_GRAY] < recipe.gray_p,
        blur=blur,
        sigma=sigma,
    )


def sample_view_params_batch(
    heights: Tensor | Sequence[int],
    widths: Tensor | Sequence[int],
    recipe: ViewRecipe,
    generator: torch.Generator | None = None,
) -> ViewParamsBatch:
    """Random parameters of one view for each of B images of the given sizes."""
    n = _as_size_tensor(heights).shape[0]
    u = torch.rand(n, N_UNIFORMS, dtype=torch.float64, generator=generator)
    return view_params_from_uniforms_batch(heights, widths, u, recipe)


# --- Rendering -----------------------------------------------------------------------------------------


def resample_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, dtype: torch.dtype) -> Tensor:
    """Per-sample matrices [B, out_size, in_size] of PIL's bilinear resize of the span [start, start + length).

    Output pixel i is centred at start + (i + 0.5) * scale in source coordinates (scale = length / out);
    its weights are the triangle filter of half-width max(scale, 1) (widened when downscaling: PIL's
    antialiasing), restricted to the span (a crop is resized on its own, as torchvision does) and
    normalised to sum to 1.
    """
    device = start.device
    wdtype = torch.float32 if device.type == "mps" else torch.float64  # PIL computes its weights in double
    start, length = start.to(wdtype), length.to(wdtype)
    scale = length / out_size
    support = scale.clamp(min=1.0)
    centre = start[:, None] + (torch.arange(out_size, device=device, dtype=wdtype) + 0.5) * scale[:, None]
    pos = torch.arange(in_size, device=device, dtype=wdtype) + 0.5
    d = (pos[None, None, :] - centre[:, :, None]).div_(support[:, None, None])
    w = (1.0 - d.abs_()).clamp_(min=0.0)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < (start + length)[:, None])
    w = w.mul_(inside[:, None, :])
    return w.div_(w.sum(dim=-1, keepdim=True)).to(dtype)


def _pad_batch(images: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 images -> ([B, 3, Hmax, Wmax] zero-padded, heights [B], widths [B])."""
    if isinstance(images, Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise TypeError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        n, _, h, w = images.shape
        return images, torch.full((n,), h), torch.full((n,), w)
    images = list(images)
    if not images:
        raise ValueError("empty batch")
    for im in images:
        if not isinstance(im, Tensor) or im.dtype != torch.uint8 or im.dim() != 3 or im.shape[0] != 3:
            desc = f"{im.dtype} {tuple(im.shape)}" if isinstance(im, Tensor) else type(im).__name__
            raise TypeError(f"expected uint8 image tensors [3, H, W], got {desc}")
        if im.shape[1] == 0 or im.shape[2] == 0:
            raise ValueError(f"empty image of shape {tuple(im.shape)}")
    heights = torch.tensor([im.shape[1] for im in images])
    widths = torch.tensor([im.shape[2] for im in images])
    shape = (len(images), 3, int(heights.max()), int(widths.max()))
    # channels-last on a CPU: the layout of torch's uint8 resize, so the views' `contiguous` copies nothing
    layout = torch.channels_last if images[0].device.type == "cpu" else torch.contiguous_format
    out = torch.empty(shape, dtype=torch.uint8, device=images[0].device, memory_format=layout).zero_()
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out, heights, widths


def resize_crops(
    batch: Tensor,
    crop: Tensor,
    flip: Tensor,
    size: int,
    dtype: torch.dtype,
    mode: str = "matmul",
) -> Tensor:
    """Crop boxes [B, 4] of a uint8 batch resized to [B, 3, size, size] grey levels (float ``dtype``, rounded).

    The horizontal flip is folded into the resampling (reversed column weights, or a flip of the uint8 crop).
    """
    n = batch.shape[0]
    if mode == "loop":
        src = batch.contiguous(memory_format=torch.channels_last)  # torch's fast uint8 resize path
        out = torch.empty(n, 3, size, size, dtype=torch.uint8, device=batch.device)
        for i, (box, f) in enumerate(zip(crop.tolist(), flip.tolist(), strict=True)):
            y = resize_crop_uint8(src[i : i + 1], tuple(box), (size, size))[0]
            out[i] = y.flip(-1) if f else y
        return out.to(dtype)
    if mode != "matmul":
        raise ValueError(f"resize_mode must be 'auto', 'matmul' or 'loop', got {mode!r}")
    crop, flip = crop.to(batch.device), flip.to(batch.device)
    wy = resample_weights(crop[:, 0], crop[:, 2], batch.shape[2], size, dtype)  # [B, S, Hmax]
    wx = resample_weights(crop[:, 1], crop[:, 3], batch.shape[3], size, dtype)  # [B, S, Wmax]
    wx = torch.where(flip[:, None, None], wx.flip(1), wx)
    x = wy[:, None] @ (batch.to(dtype) @ wx.transpose(1, 2)[:, None])  # [B, 3, S, S]
    return x.round_().clamp_(0.0, 255.0)  # uint8 levels, like the CPU path's resize


def _indices(mask: Tensor, device: torch.device) -> Tensor | None:
    """Host-side selection -> device index tensor (None when nothing is selected)."""
    idx = mask.nonzero().squeeze(1)
    return idx.to(device, non_blocking=True) if idx.numel() else None


def _apply_to(x: Tensor, idx: Tensor | None, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``fn`` applied to the samples ``idx`` of ``x`` (all of them without copies when idx covers the batch)."""
    if idx is None:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, *args)
    return x.index_copy_(0, idx, fn(x.index_select(0, idx), *args))


def apply_view_batched(
    images: Tensor | Sequence[Tensor],
    params: ViewParamsBatch,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
    resize_mode: str = "auto",
) -> Tensor:
    """Render one view [B, 3, S, S] of a uint8 batch with per-sample parameters, on the images' device.

    ``resize_mode``: "matmul" (resampling matrices, batched; the default on accelerators), "loop"
    (torch's uint8 antialiased resize per sample, as the CPU path; the default on CPU, where it is
    several times cheaper than the dense matmuls), or "auto". The batch is processed ``chunk_size``
    samples at a time (default 8 on CPU, 256 elsewhere) to bound the float working set. Computation
    is in float32 (float64 if ``dtype`` is float64); the result is cast to ``dtype``.
    """
    batch, _, _ = _pad_batch(images)
    n = batch.shape[0]
    if len(params) != n:
        raise ValueError(f"{len(params)} parameter rows for {n} images")
    device, work = batch.device, torch.float64 if dtype == torch.float64 else torch.float32
    on_cpu = device.type == "cpu"
    if resize_mode == "auto":
        resize_mode = "loop" if on_cpu else "matmul"
    # Chunks bound the float working set; on a CPU, small ones keep each chunk's passes in cache.
    chunk_size = chunk_size or (8 if on_cpu else 256)
    mean_t = torch.tensor(mean, dtype=work, device=device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=work, device=device).view(3, 1, 1)
    out = torch.empty(n, 3, image_size, image_size, dtype=dtype, device=device)
    for i in range(0, n, chunk_size):
        c = slice(i, min(i + chunk_size, n))
        p = ViewParamsBatch(**{f.name: getattr(params, f.name)[c] for f in fields(params)})
        x = resize_crops(batch[c], p.crop, p.flip, image_size, work, resize_mode).div_(255.0)
        out[c] = color.normalize(_colour_ops(x, p), mean_t, std_t)
    return out


def _colour_ops(x: Tensor, p: ViewParamsBatch) -> Tensor:
    """Jitter (in each sample's order), grey and blur on [B, 3, S, S] floats in [0, 1]."""
    device = x.device
    if bool(p.jitter.any()):
        factors = p.factors.to(device=device, dtype=x.dtype)
        for pos in range(4):
            for op in range(4):
                sel = p.jitter & (p.order[:, pos] == op) & (p.factors[:, op] != color.NEUTRAL_FACTORS[op])
                idx = _indices(sel, device)
                if idx is not None:
                    x = _apply_to(x, idx, color.JITTER_OPS[op], factors[idx, op])
    x = _apply_to(x, _indices(p.gray, device), color.grayscale)
    blur = p.blur & (p.sigma > 0)
    return _apply_to(x, _indices(blur, device), color.gaussian_blur, p.sigma[blur])


class BatchedSLIPAugment:
    """The SLIP views of a batch on its device: ``{"image", "view1", "view2"}`` each [B, 3, S, S] (or the
    subset named by ``views``, as :class:`openslip.data.augment.views.SLIPTransform`).

    ``images`` is a uint8 [B, 3, H, W] tensor or a list of uint8 [3, H, W] tensors of different sizes
    (decoded on the CPU, moved to the device). Every sample gets its own crop boxes, jitter factors and
    order, grey / blur / flip draws and blur sigma, from ``generator`` (CPU) or torch's global RNG.
    ``dtype`` is the output dtype (e.g. bfloat16 for a bf16 model); ``chunk_size`` and ``resize_mode``
    are those of :func:`apply_view_batched`.
    """

    def __init__(
        self,
        image_size: int | None = None,
        *,
        config: AugmentConfig | None = None,
        views: Sequence[str] = VIEW_NAMES,
        dtype: torch.dtype = torch.float32,
        chunk_size: int | None = None,
        resize_mode: str = "auto",
    ) -> None:
        self.config = resolve_config(image_size, config)
        self.views = check_views(views)
        if LOCAL in self.views and self.config.local_crops < 1:
            raise ValueError("the view 'local' needs local_crops >= 1 in the augmentation config")
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.resize_mode = resize_mode

    def sample_params(
        self, heights: Tensor | Sequence[int], widths: Tensor | Sequence[int], generator: torch.Generator | None = None
    ) -> dict[str, ViewParamsBatch]:
        """Parameters of the three views for images of the given sizes."""
        n = _as_size_tensor(heights).shape[0]
        u = torch.rand(n, len(VIEW_NAMES), N_UNIFORMS, dtype=torch.float64, generator=generator)
        return {
            name: view_params_from_uniforms_batch(heights, widths, u[:, i], self.config.recipe(name))
            for i, name in enumerate(VIEW_NAMES)
        }

    def sample_local_params(
        self, heights: Tensor | Sequence[int], widths: Tensor | Sequence[int], generator: torch.Generator | None = None
    ) -> list[ViewParamsBatch]:
        """Parameters of the local crops (`config.local_crops` per image, the local recipe): one record per crop
        index, each over the whole batch. Drawn after the three views, as the per-sample path draws them."""
        n = _as_size_tensor(heights).shape[0]
        u = torch.rand(n, self.config.local_crops, N_UNIFORMS, dtype=torch.float64, generator=generator)
        return [
            view_params_from_uniforms_batch(heights, widths, u[:, k], self.config.local_view)
            for k in range(self.config.local_crops)
        ]

    def apply(self, images: Tensor | Sequence[Tensor], params: dict[str, ViewParamsBatch]) -> dict[str, Tensor]:
        """Render the views named in ``params``."""
        batch, _, _ = _pad_batch(images)
        if batch.device.type == "cpu":  # one layout change for the three views' uint8 resizes
            batch = batch.contiguous(memory_format=torch.channels_last)
        return {name: self._render(batch, p, self.config.image_size) for name, p in params.items()}

    def apply_locals(self, images: Tensor | Sequence[Tensor], params: Sequence[ViewParamsBatch]) -> Tensor:
        """Render the local crops: [B, N, 3, s, s] (s: `config.local_size`), as the per-sample path stacks them."""
        batch, _, _ = _pad_batch(images)
        if batch.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return torch.stack([self._render(batch, p, self.config.local_size) for p in params], dim=1)

    def _render(self, batch: Tensor, params: ViewParamsBatch, size: int) -> Tensor:
        return apply_view_batched(
            batch,
            params,
            size,
            self.config.mean,
            self.config.std,
            dtype=self.dtype,
            chunk_size=self.chunk_size,
            resize_mode=self.resize_mode,
        )

    def __call__(
        self, images: Tensor | Sequence[Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        batch, heights, widths = _pad_batch(images)
        params = self.sample_params(heights, widths, generator)  # all three, as the per-sample path
        out = self.apply(batch, {name: params[name] for name in self.views if name != LOCAL})
        if LOCAL in self.views:
            out[LOCAL] = self.apply_locals(batch, self.sample_local_params(heights, widths, generator))
        return out
