"""Safe image and caption decoding with the bad-input policy of docs/DESIGN.md, 'Bad input'.

``decode_image`` returns an 8-bit RGB ``PIL.Image`` or raises ``BadSample(reason)``; it never lets a bad
file crash or block a loader worker. A path is ``stat``-ed before it is opened: anything but a regular file
(a FIFO would block the read forever, ``/dev/zero`` never ends) is ``not_a_file``, and a file over
``max_bytes`` is ``too_large_file``, unread. The image size is read from the header and checked against
``max_pixels`` *before* any pixel is decoded, so a decompression bomb costs a header read; a ``MemoryError``
while decoding is ``out_of_memory``. The EXIF orientation tag is applied (``exif_transpose=False`` keeps the
stored pixel order). These settings travel together as one ``DecodeOptions``: the training config builds it
(``DataConfig.decode_options``) and the loader hands it unchanged to every worker's ``decode_image``.

Pixel formats that are not 8-bit RGB are converted, not skipped (and counted as ``converted/<mode>``):

- CMYK (including Adobe's inverted CMYK JPEGs, which Pillow un-inverts) -> RGB by Pillow's naive formula;
  embedded ICC profiles are not applied.
- 16-bit grey (``I;16*``, and ``I`` holding values above 255) -> 8 bits by keeping the high byte
  (``v >> 8``), not by clipping at 255 as ``Image.convert`` does.
- 32-bit float (``F``) -> values in [0, 1] are scaled by 255, anything else is clipped to [0, 255].
- Alpha (RGBA, LA, PA, palette or grey/RGB with a ``transparency`` entry) is composited over an opaque
  background, **white by default** (what the image looks like on a web page; the reference's
  ``convert("RGB")`` instead drops alpha and shows whatever colour hides under transparent pixels).
- Palette, bilevel, grey, YCbCr, LAB, HSV -> RGB with Pillow's conversions.

Captions: see ``clean_captions``.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from openslip import files
from openslip.data.skips import BadSample, SkipCounter

# Above any real photo (a 100 MP medium-format frame is 11648 x 8736); a 1-bit 13000 x 13000 PNG is a few KB on
# disk but 500 MB once converted to RGB. Pillow's own bomb limit is 89.5 MP (warning, silenced: ours is
# checked) and 179 MP (error, caught and reported as "too_large" too).
DEFAULT_MAX_PIXELS = 100_000_000
# Bytes read for one file or tar member, checked on its size before reading: the largest photos are tens of MB,
# and without a limit a manifest row naming a huge file (or a device) is read whole into a worker's memory.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# The EXIF tag of the camera's orientation (1: upright; 2-8: mirrored and/or rotated).
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """How an image file becomes pixels: the guards that keep one bad file from stalling or exhausting a loader
    worker, and the choices that change the decoded image. Frozen: built once, then shared by every worker."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    """width x height above which the image is refused as ``too_large`` (checked on the header)."""
    max_bytes: int = DEFAULT_MAX_BYTES
    """a file or tar member larger than this is refused as ``too_large_file`` before it is read."""
    draft_size: int | None = None
    """JPEGs only: let the decoder downscale by a power of two while both sides stay >= this (much faster on
    large photos); None decodes at full size."""
    exif_transpose: bool = True
    """rotate / mirror the image as its EXIF orientation tag says (phone photos are stored sideways with the tag
    telling viewers to turn them); False keeps the stored pixel order."""
    keep_jpeg: bool = False
    """``data.decode=device``: a JPEG that passes the checks above and that a batch decoder reads as it is (see
    ``device_decodable``) comes back undecoded, as an ``EncodedJpeg``; anything else is decoded here as usual and
    counted in ``SkipCounter.fallback`` by why."""


@dataclass(frozen=True)
class EncodedJpeg:
    """The file bytes of a JPEG that passed the size and pixel checks (read from its header), left for a batch
    decoder on the training device (``openslip.data.batch_decode``)."""

    data: bytes
    size: tuple[int, int]  # (width, height) from the header


DEFAULT_DECODE = DecodeOptions()

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | Callable[[], Any]

# Leading bytes of the formats we expect; a file that starts like an image but fails to open is "truncated",
# anything else is "not_an_image".
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def read_bytes(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The file's bytes, or ``BadSample("missing_file" | "unreadable_file" | "not_a_file" | "too_large_file")``.

    The file is read through ``openslip.files`` (checked with ``stat`` before it is opened): a FIFO would block
    the open (or read) forever and a device such as ``/dev/zero`` never ends, so anything but a regular file is
    refused as ``not_a_file`` (a directory stays ``unreadable_file``); a file over ``max_bytes`` is refused as
    ``too_large_file``.
    """
    try:
        return files.read_bytes(path, limit=max_bytes)
    except files.FileError as err:
        raise bad_sample(err) from None


# `openslip.files.FileError.reason` -> the skip reason of a sample whose file it refused.
_SKIP_OF_FILE_REASON = {
    "missing": "missing_file",
    "folder": "unreadable_file",
    "not_a_file": "not_a_file",
    "unreadable": "unreadable_file",
    "too_large": "too_large_file",
}


def bad_sample(err: files.FileError) -> BadSample:
    """The counted skip of a sample whose file ``openslip.files`` refused."""
    return BadSample(_SKIP_OF_FILE_REASON.get(err.reason, "unreadable_file"), str(err))


def decode_image(
    src: ImageInput,
    options: DecodeOptions = DEFAULT_DECODE,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    counter: SkipCounter | None = None,
) -> Image.Image | EncodedJpeg:
    """Decode a file path, encoded bytes, a PIL image or a zero-argument callable into an 8-bit RGB image (with
    ``options.keep_jpeg``: a JPEG the batch decoder can read stays encoded, an ``EncodedJpeg``).

    Args:
        options: the size limits, JPEG draft size and EXIF handling (``DecodeOptions``).
        background: RGB colour that transparent pixels are composited over.
        counter: receives ``convert(<mode>)`` for every image that was not already RGB.

    Raises:
        BadSample: with reason missing_file, unreadable_file, not_a_file, too_large_file, empty_file, truncated,
            not_an_image, corrupt, too_large, out_of_memory or unsupported_mode.
    """
    if callable(src) and not isinstance(src, Image.Image):
        try:
            src = src()  # a custom source's loader: it should raise BadSample, but file errors are classified too
        except files.FileError as err:  # a reader that opens through openslip.files
            raise bad_sample(err) from None
        except FileNotFoundError as err:
            raise BadSample("missing_file", str(err)) from None
        except OSError as err:
            raise BadSample("unreadable_file", str(err)) from None
    max_pixels, exif_transpose = options.max_pixels, options.exif_transpose
    if isinstance(src, Image.Image):
        _check_size(src.size, max_pixels)
        if options.keep_jpeg and counter is not None:
            counter.fall_back("in_memory")  # a custom source's decoded image: no bytes to hand over
        try:
            src.load()  # no-op for an image in memory; decodes a lazily opened one
        except MemoryError:
            raise BadSample("out_of_memory", f"<image>: {src.size[0]}x{src.size[1]}") from None
        except Exception as err:  # noqa: BLE001 -- see the decode below
            raise BadSample("corrupt", f"<image>: {type(err).__name__}: {err}") from None
        return to_rgb(_oriented(src, exif_transpose), background=background, counter=counter)
    if isinstance(src, (str, os.PathLike)):
        name = str(src)
        data = read_bytes(src, max_bytes=options.max_bytes)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        name, data = "<bytes>", bytes(src)
    else:
        raise TypeError(f"decode_image expects a path, bytes, a PIL image or a callable, not {type(src).__name__}")
    if not data:
        raise BadSample("empty_file", name)

    img = _open(data, name, max_pixels)
    if options.keep_jpeg:
        why = device_decodable(img, data, exif_transpose)
        if why is None:
            if img.mode == "L" and counter is not None:
                counter.convert("l")  # the batch decoder makes it RGB, as to_rgb would have
            return EncodedJpeg(data, img.size)
        if counter is not None:
            counter.fall_back(why)
    if options.draft_size is not None and img.format == "JPEG":
        img.draft("RGB", (options.draft_size, options.draft_size))
    try:
        img.load()
    except MemoryError:  # a worker must survive an image its memory cannot hold: skip it, counted
        raise BadSample("out_of_memory", f"{name}: {img.size[0]}x{img.size[1]}") from None
    except (OSError, EOFError) as err:
        reason = "truncated" if isinstance(err, EOFError) or "truncated" in str(err).lower() else "corrupt"
        raise BadSample(reason, f"{name}: {err}") from None
    except Exception as err:  # noqa: BLE001 -- Pillow plugins raise ValueError, SyntaxError, struct.error, ...
        raise BadSample("corrupt", f"{name}: {type(err).__name__}: {err}") from None
    return to_rgb(_oriented(img, exif_transpose), background=background, counter=counter)


def device_decodable(img: Image.Image, data: bytes, exif_transpose: bool) -> str | None:
    """None when a batch decoder (nvJPEG through torchvision, or PIL on a CPU) reads the JPEG whose header is
    ``img`` as the CPU path would; else why it is decoded on the CPU instead (the ``fallback`` count's key).

    Read from the header only: the format (PNG, GIF, WebP... are not JPEG), the colour mode (a CMYK JPEG needs
    Pillow's un-inversion), the EXIF orientation (the CPU path turns the image upright), and the end-of-image
    marker: a file cut short (a partial download) lacks it, and the CPU decode in the worker then skips it as
    ``truncated`` like any other bad sample, where a batch decoder could not replace it."""
    if img.format != "JPEG":
        return (img.format or "unknown").lower()
    if img.mode not in ("RGB", "L"):
        return f"jpeg_{img.mode.lower()}"
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "jpeg_no_end_marker"
    if exif_transpose:
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # noqa: BLE001 -- a malformed EXIF block: the CPU path keeps the stored pixel order too
            orientation = 1
        if orientation not in (1, None):
            return "jpeg_exif_orientation"
    return None


def _oriented(img: Image.Image, exif_transpose: bool) -> Image.Image:
    """The image turned upright by its EXIF orientation tag, when asked and when it has one (else unchanged)."""
    if not exif_transpose:
        return img
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in (1, None):
            return img
        return ImageOps.exif_transpose(img)
    except MemoryError:
        raise BadSample("out_of_memory", f"<image>: {img.size[0]}x{img.size[1]}") from None
    except Exception:  # noqa: BLE001 -- a malformed EXIF block: keep the stored orientation, the pixels are fine
        return img


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Parse the header only (``Image.open`` is lazy) and enforce the pixel budget before decoding."""
    try:
        with warnings.catch_warnings():
            # We enforce our own max_pixels below; Pillow's warning for > 89.5 MP would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise BadSample("too_large", f"{name}: {err}") from None
    except Exception as err:  # noqa: BLE001 -- UnidentifiedImageError, SyntaxError, OSError, struct.error, ...
        looks_like_image = data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        if looks_like_image:
            raise BadSample("truncated", f"{name}: {err}") from None
        raise BadSample("not_an_image", name) from None
    _check_size(img.size, max_pixels, name)
    return img


def _check_size(size: tuple[int, int], max_pixels: int, name: str = "<image>") -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise BadSample("corrupt", f"{name}: size {w}x{h}")
    if w * h > max_pixels:
        raise BadSample("too_large", f"{name}: {w}x{h} = {w * h:,} pixels > max_pixels={max_pixels:,}")


def to_rgb(
    img: Image.Image, *, background: tuple[int, int, int] = (255, 255, 255), counter: SkipCounter | None = None
) -> Image.Image:
    """Convert a decoded image of any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    kind = mode.lower() + ("+transparency" if "transparency" in img.info and mode not in _ALPHA_MODES else "")
    try:
        if mode in _SIXTEEN_BIT or mode == "I":
            out = _sixteen_bit_to_rgb(img)
        elif mode == "F":
            arr = np.asarray(img, dtype=np.float32)
            arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
            if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
                arr = arr * 255.0
            out = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
        elif mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")  # palette / grey / RGB with a tRNS colour, PA, LA, premultiplied RGBa
            out = Image.new("RGB", rgba.size, background)
            out.paste(rgba, mask=rgba.getchannel("A"))
        else:
            out = img.convert("RGB")  # CMYK, P, L, 1, YCbCr, LAB, HSV
    except MemoryError:
        raise BadSample("out_of_memory", f"mode {mode} {img.size[0]}x{img.size[1]} to RGB") from None
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise BadSample("unsupported_mode", f"mode {mode}: {err}") from None
    if out.mode != "RGB":
        raise BadSample("unsupported_mode", f"mode {mode} converted to {out.mode}")
    if counter is not None:
        counter.convert(kind)
    return out


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img).astype(np.int64)  # numpy handles the big-endian I;16B layout
    if img.mode == "I" and arr.size and arr.max() <= 255 and arr.min() >= 0:
        eight = arr  # an 8-bit image stored in a 32-bit container
    else:
        eight = np.clip(arr, 0, 65535) >> 8
    return Image.fromarray(eight.astype(np.uint8), "L").convert("RGB")


# ---------------------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------------------


def clean_captions(raw: Any) -> list[str]:
    """The usable captions of a sample, or ``BadSample("empty_caption" | "bad_caption" | "missing_caption")``.

    ``raw`` is a caption or a sequence of captions, each ``str`` or UTF-8 ``bytes``. A caption that is empty
    or whitespace only is dropped; bytes that are not UTF-8 (or a ``str`` carrying surrogate escapes from
    such bytes) and non-text values are dropped as bad. The sample is skipped only when nothing usable is
    left. Over-long captions are kept as they are: the tokenizer truncates them.
    """
    if raw is None:
        raise BadSample("missing_caption")
    if isinstance(raw, (str, bytes, bytearray)):
        items: Sequence[Any] = [raw]
    elif isinstance(raw, Sequence) or (isinstance(raw, np.ndarray) and raw.ndim == 1):
        items = raw
    else:
        raise BadSample("bad_caption", f"a caption of type {type(raw).__name__}")
    if len(items) == 0:
        raise BadSample("missing_caption")
    good: list[str] = []
    bad = 0
    for item in items:
        text = _caption_text(item)
        if text is None:
            bad += 1
        elif text.strip():
            good.append(text)
    if good:
        return good
    raise BadSample("bad_caption" if bad else "empty_caption")


def _caption_text(item: Any) -> str | None:
    """The caption as str, "" for an empty one (None / NaN), None when it is not valid text."""
    if item is None:
        return ""
    if isinstance(item, float) and item != item:  # NaN: an empty cell read by pandas or numpy
        return ""
    if isinstance(item, (bytes, bytearray)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(item, str):
        try:
            item.encode("utf-8")  # fails on lone surrogates (non-UTF-8 bytes read with surrogateescape)
        except UnicodeEncodeError:
            return None
        return item
    return None
