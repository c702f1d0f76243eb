"""Timing of the SLIP augmentation paths against a straightforward per-sample PIL pipeline.

``python -m openslip.data.augment.pil_reference --n 200 --image-size 224`` prints milliseconds per 3-view sample
on one core for:

- ``pil``: the straightforward pipeline of the reference, per view: PIL crop + bilinear resize,
  ImageEnhance brightness / contrast / colour, hue through PIL's HSV mode, grey via ``convert("L")``,
  ``ImageFilter.GaussianBlur``, flip, then to a normalised float tensor;
- ``cpu``: :class:`openslip.data.augment.views.SLIPTransform`;
- ``batched``: :class:`openslip.data.augment.batched.BatchedSLIPAugment` on one batch, per sample.

All three render the same recipe from the same kind of parameters, on ~500 x 375 images decoded from
JPEG (decoding is timed separately and excluded). Times are CPU time of this process
(``time.process_time``, one thread), which a busy shared machine inflates far less than wall time;
the paths run in interleaved rounds and each reports its median round. With ``device="cuda"`` the
batched path is timed in wall time after a synchronise. The figures: docs/PERFORMANCE.md; how benchmarks are
run: docs/DESIGN.md, 'Measuring performance'.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from openslip.data.augment.batched import BatchedSLIPAugment
from openslip.data.augment.params import IMAGENET_MEAN, IMAGENET_STD, ViewParams
from openslip.data.augment.views import SLIPTransform


def _pil_hue(img: Image.Image, shift: float) -> Image.Image:
    """torchvision's PIL hue adjustment: shift the 8-bit H channel of PIL's HSV mode, with wrap-around."""
    h, s, v = img.convert("HSV").split()
    h_arr = np.asarray(h, dtype=np.uint8) + np.uint8(np.int32(shift * 255) % 256)  # uint8 wraps
    return Image.merge("HSV", (Image.fromarray(h_arr, "L"), s, v)).convert("RGB")


_PIL_JITTER = (
    lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    lambda img, f: ImageEnhance.Color(img).enhance(f),
    _pil_hue,
)


def pil_render_view(
    img: Image.Image, params: ViewParams, image_size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """One view with the straightforward PIL pipeline (the baseline; the same parameters as the fast paths)."""
    top, left, h, w = params.crop
    out = img.crop((left, top, left + w, top + h)).resize((image_size, image_size), Image.BILINEAR)
    if params.jitter:
        for op in params.order:
            out = _PIL_JITTER[op](out, params.factors[op])
    if params.gray:
        out = out.convert("L").convert("RGB")
    if params.blur:
        out = out.filter(ImageFilter.GaussianBlur(radius=params.sigma))
    if params.flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.array(out)).permute(2, 0, 1).float().div_(255.0)
    return x.sub_(mean).div_(std)


def pil_transform(transform: SLIPTransform, img: Image.Image, generator: torch.Generator | None = None) -> dict:
    """The three views of one image with the PIL baseline, parameters drawn like ``transform``'s."""
    img = img.convert("RGB")
    params = transform.sample_params(img.height, img.width, generator)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return {name: pil_render_view(img, p, transform.config.image_size, mean, std) for name, p in params.items()}


def synthetic_jpegs(n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[bytes]:
    """``n`` photo-like JPEGs (smooth colour fields with texture and edges), quality 90."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for _ in range(n):
        base = rng.random((6, 8, 3)) * 255
        img = Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 12, (h, w, 3))
        arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def benchmark_augment(
    n: int = 64, image_size: int = 224, *, rounds: int = 5, device: str = "cpu", batch_size: int | None = None
) -> dict[str, float]:
    """Milliseconds per 3-view sample on one core for the PIL baseline, the CPU path and the batched path.

    ``n`` images per round, ``rounds`` interleaved rounds, medians reported, plus ``speedup_cpu`` and
    ``speedup_batched`` (baseline time / path time) and the decode time per image. ``device`` is where
    the batched path runs (its time includes copying the uint8 batch there).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        jpegs = synthetic_jpegs(n)
        t0 = time.process_time()
        images = [_decode(b) for b in jpegs]
        decode_ms = (time.process_time() - t0) / n * 1e3
        transform = SLIPTransform(image_size)
        batched = BatchedSLIPAugment(image_size)
        batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
        bs = batch_size or n
        gen = torch.Generator().manual_seed(0)

        def run_pil() -> None:
            for im in images:
                pil_transform(transform, im, gen)

        def run_cpu() -> None:
            for im in images:
                transform(im, gen)

        def run_batched() -> None:
            for i in range(0, n, bs):
                out = batched(batch[i : i + bs].to(device), generator=gen)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            del out

        paths = {"pil": run_pil, "cpu": run_cpu, "batched": run_batched}
        for fn in paths.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(rounds):
            for name, fn in paths.items():
                clock = time.perf_counter if (name == "batched" and device != "cpu") else time.process_time
                t = clock()
                fn()
                times[name].append((clock() - t) / n * 1e3)
        result = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
        result["speedup_cpu"] = result["pil_ms"] / result["cpu_ms"]
        result["speedup_batched"] = result["pil_ms"] / result["batched_ms"]
        result["decode_ms"] = decode_ms
        return result
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images per round")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="device of the batched path")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of the batched path (default n)")
    args = parser.parse_args(argv)
    result = benchmark_augment(
        args.n, args.image_size, rounds=args.rounds, device=args.device, batch_size=args.batch_size
    )
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    main()
