"""Colour and blur operations on float images, shared by the per-sample and the batched augmentation paths.

Every function takes float images in [0, 1] of shape ``[..., 3, H, W]`` and per-sample factors that are
either Python floats (the per-sample CPU path) or tensors that broadcast against the leading dimensions
(the batched path, e.g. shape ``[N]`` for ``[N, 3, H, W]``). They reproduce the semantics of the
reference's torchvision/PIL ColorJitter, RandomGrayscale and PIL ``GaussianBlur(radius=sigma)`` in
float arithmetic: the reference rounds to uint8 after every operation, this code does not, which moves
outputs by at most about one grey level.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

# ITU-R 601-2 luma, the weights of PIL's convert("L") and of torchvision's rgb_to_grayscale.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

Factor = float | Tensor


@functools.lru_cache(maxsize=64)
def _const(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor, built once per dtype and device (no host-to-device copy per call)."""
    return torch.tensor(values, dtype=dtype, device=device)


def _per_sample(f: Factor, x: Tensor, trailing: int) -> Factor:
    """A [N] tensor factor reshaped to broadcast over ``trailing`` trailing dims of ``x``; floats pass through."""
    if isinstance(f, Tensor):
        return f.to(dtype=x.dtype, device=x.device).reshape(f.shape + (1,) * trailing)
    return float(f)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma of ``x`` [..., 3, H, W] -> [..., 1, H, W]."""
    w = _const(LUMA_WEIGHTS, x.dtype, x.device)
    return (w @ x.flatten(-2)).reshape(x.shape[:-3] + (1,) + x.shape[-2:])


def grayscale(x: Tensor) -> Tensor:
    """RandomGrayscale's output: the luma copied into all three channels (PIL convert("L") then "RGB")."""
    return rgb_to_grayscale(x).expand_as(x).contiguous()


def adjust_brightness(x: Tensor, factor: Factor) -> Tensor:
    """Blend with black: ``x * factor``, clipped (PIL ImageEnhance.Brightness)."""
    return (x * _per_sample(factor, x, 3)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Factor) -> Tensor:
    """Blend with the image's mean luma (PIL ImageEnhance.Contrast; the reference rounds that mean to a grey level)."""
    # mean(luma) = luma of the per-channel means, so one reduction suffices.
    w = _const(LUMA_WEIGHTS, x.dtype, x.device)
    mean = x.mean(dim=(-2, -1)) @ w
    if isinstance(factor, Tensor):
        f = _per_sample(factor, x, 3)
        return torch.lerp(mean[..., None, None, None].expand_as(x), x, f).clamp_(0.0, 1.0)
    return (x * factor).add_((1.0 - factor) * float(mean)).clamp_(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Factor) -> Tensor:
    """Blend with the image's own luma (PIL ImageEnhance.Color)."""
    gray = rgb_to_grayscale(x)
    if isinstance(factor, Tensor):
        return torch.lerp(gray.expand_as(x), x, _per_sample(factor, x, 3)).clamp_(0.0, 1.0)
    return (x * factor).add_(gray, alpha=1.0 - factor).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Factor) -> Tensor:
    """Rotate the HSV hue by ``shift`` turns (in [-0.5, 0.5]), keeping value and saturation.

    Exact HSV semantics (the hexcone model of colorsys, PIL and torchvision) without an explicit
    RGB -> HSV -> RGB round trip: V = max and C = max - min are invariant; the hue h in sextants is
    found as colorsys does, shifted and wrapped into [0, 6); the outputs are R = V - C S(h - 1),
    G = m + C S(h), B = m + C S(h - 2) with S(k) = clamp(min(k, 4 - k), 0, 1), which is the HSV -> RGB
    triangle wave rewritten with t(k + 3) = 1 - t(k) so that no channel needs a second wrap. Branch
    selection uses sign() of non-negative differences (an exact 0/1 switch) because ``torch.where``
    and ``torch.remainder`` are several times slower on CPU. The reference quantises the hue to
    1/255 of a turn (PIL's 8-bit HSV); this does not.
    """
    r, g, b = x.unbind(-3)
    v = x.amax(dim=-3)
    m = x.amin(dim=-3)
    c = v - m
    # Hue times chroma by the max channel, with colorsys' priority r, then g, then b.
    h_g = (b - r).add_(c, alpha=2.0)
    h_b = (r - g).add_(c, alpha=4.0)
    h = torch.lerp(g - b, torch.lerp(h_g, h_b, torch.sign(v - g)), torch.sign(v - r))
    # Grey pixels have a zero numerator and chroma: any positive divisor keeps them at V.
    h = h.div_(c.clamp(min=1e-12)).add_(_per_sample(shift, x, 2) * 6.0)
    h = h.sub_(torch.floor_(h * (1.0 / 6.0)), alpha=6.0)  # wrap into [0, 6)
    offsets = _const((-1.0, 0.0, -2.0), x.dtype, x.device)[:, None, None]
    k = h.unsqueeze(-3) + offsets
    out = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0).mul_(c.unsqueeze(-3))
    out.narrow(-3, 1, 2).add_(m.unsqueeze(-3))
    red = out.narrow(-3, 0, 1)
    torch.sub(v.unsqueeze(-3), red, out=red)
    return out


# Jitter operations in torchvision's ColorJitter order; ViewParams.order is a permutation of these ids.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
NEUTRAL_FACTORS = (1.0, 1.0, 1.0, 0.0)


def pil_box_radius(sigma: Tensor, passes: int = 3) -> Tensor:
    """The extended-box radius PIL uses so that ``passes`` box blurs have variance sigma^2.

    Gwosdek, Grewenig, Bruhn, Weickert, "Theoretical foundations of Gaussian convolution by extended box
    filtering" (SSVM 2011), eqs. 7, 11, 14; the formula of Pillow's ``ImageFilter.GaussianBlur(radius)``.
    """
    s2 = sigma.double() ** 2 / passes
    box_len = torch.sqrt(12.0 * s2 + 1.0)
    l = torch.floor((box_len - 1.0) / 2.0)
    frac = (2 * l + 1) * (l * (l + 1) - 3 * s2) / (6 * (s2 - (l + 1) ** 2))
    return l + frac


def pil_box_kernel(sigma: Tensor, passes: int = 3) -> Tensor:
    """One pass of PIL's extended box blur as symmetric 1-D kernels [N, K] (K odd; all rows padded to one K).

    An extended box of radius r = l + a has 2l + 1 taps of weight 1 / (2r + 1) and one tap of weight
    a / (2r + 1) at each end. ``sigma == 0`` gives the identity kernel.
    """
    sigma = sigma.double().reshape(-1)
    r = pil_box_radius(sigma, passes)
    l = torch.floor(r)[:, None]
    half = int(l.max().item()) + 1 if sigma.numel() else 1
    offs = torch.arange(-half, half + 1, dtype=torch.float64).abs()
    inner = 1.0 / (2 * r[:, None] + 1)
    edge = (1.0 - (2 * l + 1) * inner) / 2
    return torch.where(offs <= l, inner, torch.where(offs == l + 1, edge, 0.0))


def pil_box_taps(sigma: float, passes: int = 3) -> list[float]:
    """:func:`pil_box_kernel` for one sigma in plain Python (the per-sample path), zero end taps dropped."""
    s2 = sigma * sigma / passes
    l = math.floor((math.sqrt(12.0 * s2 + 1.0) - 1.0) / 2.0)
    r = l + (2 * l + 1) * (l * (l + 1) - 3 * s2) / (6 * (s2 - (l + 1) ** 2))
    inner = 1.0 / (2 * r + 1)
    edge = (1.0 - (2 * l + 1) * inner) / 2
    half = [inner] * (l + 1) + ([edge] if edge > 0 else [])  # centre tap first
    return half[:0:-1] + half


def _blur_axis(x: Tensor, kernel: Tensor | list[float], dim: int) -> Tensor:
    """Symmetric filtering along ``dim`` (-1 or -2) with edge replication, from shifted slices.

    ``kernel`` is one list of taps, or per-sample kernels [N, K] for ``x`` [N, 3, H, W]. No padded copy is
    made (``F.pad(mode="replicate")`` is also a multi-threaded kernel that stalls on a busy machine):
    the interior takes the shifted input, the first and last ``i`` outputs take the edge pixel.
    """
    half = (kernel.shape[-1] if isinstance(kernel, Tensor) else len(kernel)) // 2
    n = x.shape[dim]
    if isinstance(kernel, Tensor):
        w = kernel.to(dtype=x.dtype, device=x.device).reshape(kernel.shape[:1] + (1,) * 3 + kernel.shape[1:])

        def acc(dst: Tensor, src: Tensor, i: int) -> None:
            dst.addcmul_(src, w[..., half + i])

        out = x * w[..., half]
    else:

        def acc(dst: Tensor, src: Tensor, i: int) -> None:
            dst.add_(src, alpha=kernel[half + i])

        out = x * kernel[half]
    for i in range(1, half + 1):
        if i < n:
            acc(out.narrow(dim, i, n - i), x.narrow(dim, 0, n - i), i)  # x[j - i]
            acc(out.narrow(dim, 0, n - i), x.narrow(dim, i, n - i), i)  # x[j + i]
        e = min(i, n)  # outputs whose neighbour at distance i lies outside: replicate the edge pixel
        acc(out.narrow(dim, 0, e), x.narrow(dim, 0, 1), i)
        acc(out.narrow(dim, n - e, e), x.narrow(dim, n - 1, 1), i)
    return out


# Sides up to this are blurred with dense matrices (below), larger ones with shifted slices. Dense costs
# O(side^3) but a dozen torch calls; the slices cost O(side^2 x taps) in ~150 calls per image. On one core of a
# Xeon (AVX-512): 0.11-0.13 ms against 0.23-0.41 ms at 64 px, 0.25 against 0.32-0.49 ms at 96 px, about even at
# 128 px, 2.0 against 0.9-1.2 ms at 224 px (docs/PERFORMANCE.md).
DENSE_BLUR_MAX_SIDE = 128


def box_blur_matrix(
    kernel: Tensor | list[float], n: int, passes: int, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> Tensor:
    """The linear map of ``passes`` edge-replicating passes of a symmetric 1-D kernel along an axis of length n.

    ``kernel`` is one list of taps -> [n, n], or per-sample kernels [N, K] -> [N, n, n]. One pass is
    ``y[i] = sum_k w[k] x[clamp(i + k, 0, n - 1)]``, a matrix B whose edge columns collect the taps that fall
    outside; since every pass replicates the edges of its own input, as PIL does, the passes compose exactly
    to B^passes.
    """
    taps = torch.as_tensor(kernel, dtype=dtype).to(device)
    k = taps.shape[-1]
    offsets = torch.arange(k, device=device) - k // 2
    cols = (torch.arange(n, device=device)[:, None] + offsets).clamp_(0, n - 1)  # [n, K]: the source of each tap
    if taps.dim() == 1:
        b = taps.new_zeros(n, n).scatter_add_(1, cols, taps.expand(n, k))
    else:
        m = taps.shape[0]
        b = taps.new_zeros(m, n, n).scatter_add_(2, cols.expand(m, n, k), taps[:, None, :].expand(m, n, k))
    out = b
    for _ in range(passes - 1):
        out = out @ b
    return out


def gaussian_blur(x: Tensor, sigma: Factor, passes: int = 3) -> Tensor:
    """PIL ``GaussianBlur(radius=sigma)`` (the reference's blur) on ``x`` [3, H, W] or [N, 3, H, W].

    Like PIL: ``passes`` extended box blurs along x, then along y, each replicating the edge pixels of
    its own input; the sum of weights is exactly 1. ``sigma`` is a float (one image, or the same for all)
    or a [N] tensor with one sigma per sample. Images up to ``DENSE_BLUR_MAX_SIDE`` use the composed
    matrices of :func:`box_blur_matrix` (``My @ x @ Mx^T``: the same map, another rounding order).
    """
    if x.dim() not in (3, 4):
        raise ValueError(f"expected images [3, H, W] or [N, 3, H, W], got shape {tuple(x.shape)}")
    if isinstance(sigma, Tensor) and sigma.dim() > 0:
        if x.dim() != 4 or sigma.shape[0] != x.shape[0]:
            raise ValueError(
                f"per-sample sigma of shape {tuple(sigma.shape)} needs [N, 3, H, W] images, got {tuple(x.shape)}"
            )
        kernel: Tensor | list[float] = pil_box_kernel(sigma.cpu(), passes)
    else:
        kernel = pil_box_taps(float(sigma), passes)
    if float(sigma if not isinstance(sigma, Tensor) else sigma.max()) <= 0:
        return x.clone()
    h, w = x.shape[-2:]
    if max(h, w) <= DENSE_BLUR_MAX_SIDE:
        my = box_blur_matrix(kernel, h, passes, x.dtype, x.device)  # built where x is: no host work per batch
        mx = my if w == h else box_blur_matrix(kernel, w, passes, x.dtype, x.device)
        if my.dim() == 3:  # per-sample matrices [N, n, n], broadcast over the channels
            my, mx = my[:, None], mx[:, None]
        return my @ x @ mx.transpose(-1, -2)
    for dim in (-1, -2):
        for _ in range(passes):
            x = _blur_axis(x, kernel, dim)
    return x


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` have shape [3, 1, 1]."""
    return x.sub(mean).div_(std)
