"""``data.decode=device``: loader workers hand over JPEG bytes, and the whole batch is decoded where it trains.

Why: on a GPU machine the JPEG decode is most of a loader worker's CPU time (issue 27: 6.6 ms per 500 x 375 photo
with the views on the device), and a node has no more cores per GPU than one GPU needs. nvJPEG (through
``torchvision.io.decode_jpeg`` on a list, ``device="cuda"``) decodes the batch on the GPU instead.

The hand-off: each worker sample is a 1-D uint8 array (the JPEG file's bytes) or, for an image decoded in the
worker (a PNG, a CMYK JPEG...; counted in ``SkipCounter.fallback``), its pixels ``[3, h, w]``. ``pack`` puts a
batch's samples into one uint8 buffer with an index ``[B, 5]`` (start, end, height, width, layout; height 0 marks
JPEG bytes, layout 1 pixels stored [h, w, 3] as the decoder left them): one shared-memory segment and one pinned
copy per batch instead of B. ``BatchDecoder`` splits the buffer back into the list of per-image uint8 tensors
(views, no copy) and returns the images ``[3, h, w]`` uint8 on the device, the longer side at most ``max_side``.
With data.decode=cpu the workers send only pixels, packed the same way.

On a CPU device the decoder is PIL, with the same DCT draft scaling and shrink as the workers' CPU decode, so the
images (and the views drawn from them) are those of ``data.augment=device`` with ``data.decode=cpu``: the tests
check the whole hand-off on machines without a GPU.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from openslip.data.augment.views import source_tensor
from openslip.data.buffer_ring import new_buffer
from openslip.data.skips import SkipCounter
from openslip.errors import ConfigError

# The fallback keys of the images the training process decodes itself (``SkipCounter.fallback``).
REFUSED = "refused_by_batch_decoder"  # nvJPEG would not read it (an unusual JPEG): PIL decoded it instead
UNDECODABLE = "undecodable_jpeg"  # no decoder read it: a grey image of its size took its place in the batch
_GREY = 128


def packed_size(items: Sequence[np.ndarray]) -> int:
    """Bytes of ``pack``'s buffer for these samples."""
    return sum(item.size for item in items)


def pack(items: Sequence[np.ndarray], out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer uint8 [sum of sizes], index long [B, 5]: start, end, height, width, layout) of the samples' arrays:
    1-D JPEG bytes (height = width = 0) or pixels [3, h, w]. Pixels whose memory is [h, w, 3] (a decoder's array left
    unshrunk) are stored so (layout 1), the others [3, h, w] (layout 0): one plain copy each, no transpose. The
    buffer is ``out`` (uint8 [packed_size]) or a new one, in shared memory in a loader worker: sending it to the
    training process then copies nothing."""
    rows = []
    start = 0
    for item in items:
        h, w, hwc = 0, 0, 0
        if item.ndim == 3:
            h, w, hwc = item.shape[1], item.shape[2], int(item.transpose(1, 2, 0).flags.c_contiguous)
        rows.append((start, start + item.size, h, w, hwc))
        start += item.size
    buffer = new_buffer(start) if out is None else out
    target = buffer.numpy()
    for item, (begin, end, _, _, hwc) in zip(items, rows, strict=True):
        target[begin:end] = (item.transpose(1, 2, 0) if hwc else item).reshape(-1)
    return buffer, torch.tensor(rows, dtype=torch.long).reshape(len(items), 5)


# An image at most this much longer than ``max_side`` is handed over whole: the shrink would cost a worker more CPU
# (0.5 ms for a 500 x 375 photo in a 224 px run, a third of its time) than its smaller hand-off saves, and the views
# then come from the full image, as with data.augment=cpu.
SHRINK_SLACK = 1.25


def shrunk_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(h, w) with the longer side at most ``max_side``, the aspect kept (rounded, at least one pixel); unchanged
    when the longer side is at most ``SHRINK_SLACK`` x ``max_side``."""
    if max(h, w) <= SHRINK_SLACK * max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def shrink(image: Image.Image | np.ndarray | torch.Tensor, max_side: int) -> torch.Tensor:
    """The image as [3, h, w] uint8, its longer side at most ``max_side`` (antialiased bilinear; unchanged up to
    ``SHRINK_SLACK`` x ``max_side``). Every path shrinks with this: the workers' ``BytesOrPixels``, the batch
    decoder.

    Takes a PIL image or [h, w, 3] array (to RGB as ``to_rgb_uint8``), or a [3, h, w] uint8 tensor on any device.
    On the CPU it is torch's uint8 antialiased kernel on channels-last pixels (PIL's bilinear filter, within a grey
    level or two), 3x faster than PIL's own resize: 0.53 against 1.6 ms for a 500 x 375 photo at 448, which with
    PIL's copy was half a worker's time per sample with the views on the device
    (docs/PERFORMANCE.md, 'Decoding on the device'). Elsewhere (nvJPEG's full-size decodes on CUDA) the same
    filter in float, rounded. A shrunk result is channels-first and contiguous; an image left as it was keeps its
    array's [h, w, 3] strides (``pack`` stores it so)."""
    if not isinstance(image, torch.Tensor):
        image = source_tensor(image)[0]  # [3, h, w], channels-last strides, no copy of PIL's array
    h, w = image.shape[1:]
    size = shrunk_size(h, w, max_side)
    if size == (h, w):
        return image
    if image.device.type != "cpu":
        return shrink_float(image, size)
    x = image[None].contiguous(memory_format=torch.channels_last)  # torch's fast uint8 path (no copy if so)
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def shrink_float(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[3, h, w] uint8 resized to ``size`` by the antialiased bilinear filter in float, rounded: ``shrink`` off the
    CPU (CUDA's antialiased kernels take no uint8); within one grey level of the uint8 kernel (tested)."""
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


def torchvision_decode_jpeg() -> Callable[..., list[torch.Tensor]]:
    """``torchvision.io.decode_jpeg`` reading as RGB, or a one-line ConfigError: torchvision is an optional
    dependency of this path only (GPU installs have it)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        raise ConfigError(
            "data.decode=device on CUDA decodes with torchvision (nvJPEG), which is not installed: "
            "pip install torchvision, or use data.decode=cpu"
        ) from None

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


class BatchDecoder:
    """A packed batch (``pack``) -> images [3, h, w] uint8 on ``device``; see the module docstring."""

    def __init__(
        self, device: torch.device, max_side: int, draft_size: int | None, counter: SkipCounter, jpegs: bool = True
    ) -> None:
        """``jpegs=False`` (data.decode=cpu): the workers decoded every image, so only the pixels' copy is left and
        torchvision is not needed."""
        self.device = device
        self.max_side = max_side
        self.draft_size = draft_size
        self.counter = counter  # the loader's: fall-backs decided here count with the workers' (checkpointed)
        self.jpegs = jpegs
        self._nvjpeg = torchvision_decode_jpeg() if device.type == "cuda" and jpegs else None
        self.cpu_s = 0.0  # this process's CPU seconds in ``decode`` so far (the whole decode with the PIL decoder)

    def copy(self, buffer: torch.Tensor, index: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
        """The per-image tensors of a packed batch: (JPEG bytes on the host, True) or (pixels [3, h, w] on the
        device, False). The pixels of the worker-decoded images travel in one copy of the buffer."""
        rows = index.tolist()
        on_device = buffer
        if any(row[2] for row in rows):
            on_device = buffer.to(self.device, non_blocking=True)
        out = []
        for start, end, h, w, hwc in rows:
            if h:  # pixels [3, h, w], with [h, w, 3] strides if stored so (layout 1)
                pixels = on_device[start:end]
                out.append((pixels.view(h, w, 3).permute(2, 0, 1) if hwc else pixels.view(3, h, w), False))
            else:
                out.append((buffer[start:end], True))
        return out

    def decode(self, items: list[tuple[torch.Tensor, bool]]) -> list[torch.Tensor]:
        """Decode the JPEGs of ``copy``'s list on the device; every image [3, h, w] uint8, longer side <= max_side."""
        start = time.thread_time()
        jpegs = [data for data, is_jpeg in items if is_jpeg]
        decoded = iter(self._decode_jpegs(jpegs) if jpegs else [])
        images = [shrink(next(decoded) if is_jpeg else data, self.max_side) for data, is_jpeg in items]
        self.cpu_s += time.thread_time() - start
        return images

    def __call__(self, buffer: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
        return self.decode(self.copy(buffer, index))

    def _decode_jpegs(self, jpegs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._nvjpeg is None:
            return [self._decode_pil(data) for data in jpegs]
        try:
            return self._nvjpeg(jpegs, self.device)
        except RuntimeError:  # one file nvJPEG refuses fails the whole batch call: retry one by one
            return [self._decode_one(data) for data in jpegs]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor:
        try:
            return self._nvjpeg([data], self.device)[0]
        except RuntimeError:
            self.counter.fall_back(REFUSED)
            return self._decode_pil(data).to(self.device)

    def _decode_pil(self, data: torch.Tensor) -> torch.Tensor:
        """PIL's decode, as a worker's ``decode_image`` + ``BytesOrPixels`` do it: DCT draft scaling to ``draft_size``,
        RGB, the shrink to ``max_side``. A file it cannot read becomes a grey image, counted (``UNDECODABLE``):
        the batch is built, its sample cannot be replaced here."""
        try:
            image = Image.open(io.BytesIO(data.numpy().tobytes()))
            if self.draft_size is not None:
                image.draft("RGB", (self.draft_size, self.draft_size))
            pixels = shrink(image.convert("RGB"), self.max_side)  # [3, h, w]
            return pixels if pixels.is_contiguous() else pixels.clone()  # unshrunk: PIL's read-only array, copied
        except Exception:  # noqa: BLE001 -- a corrupt scan that passed the header checks: Pillow raises many kinds
            self.counter.fall_back(UNDECODABLE)
            return torch.full((3, 8, 8), _GREY, dtype=torch.uint8)
