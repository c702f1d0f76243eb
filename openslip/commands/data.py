"""`openslip data {make-shards,inspect}`: write WebDataset shards from any source; look at a dataset.

openslip data make-shards data/train.csv shards/ --shard-size 1000 --image-size 256
openslip data inspect shards/ --n 16 --output grid.png
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openslip.errors import DataError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="make shards from a dataset, inspect a dataset")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    make = sub.add_parser("make-shards", help="write a manifest / folder / reference dataset as WebDataset shards")
    make.add_argument("src", help="a data spec: manifest, folder, shards, FORMAT:PATH (see openslip.data.open_source)")
    make.add_argument("out", help="output folder for shard-NNNNNN.tar and index.json")
    make.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    make.add_argument("--image-size", type=int, default=None, help="resize so the shorter side is at most S")
    make.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    make.add_argument("--no-shuffle", action="store_true", help="keep the source order")
    make.add_argument("--root", default=None, help="image root for manifests / reference metadata")
    make.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the shards of an earlier make-shards in OUT (OUT may hold nothing else)",
    )
    make.set_defaults(func=run_make_shards)

    inspect = sub.add_parser("inspect", help="count samples and skip reasons; draw a grid of samples")
    inspect.add_argument("src", help="a data spec (see make-shards)")
    inspect.add_argument("--n", type=int, default=16, help="samples in the grid (default 16)")
    inspect.add_argument("--scan", type=int, default=1000, help="samples decoded to count skips (0: all)")
    inspect.add_argument("--output", default=None, help="write a PNG grid of samples with their captions")
    inspect.add_argument("--root", default=None, help="image root for manifests / reference metadata")
    inspect.add_argument("--image-size", type=int, default=128, help="grid cell size in pixels (default 128)")
    inspect.set_defaults(func=run_inspect)


def _open(args: argparse.Namespace):
    from openslip.data.sources import open_source

    options = {"root": args.root} if args.root else {}
    return open_source(args.src, **options)


def _source_paths(spec: str) -> list[Path]:
    """The files and folders a data spec reads: its path, and a shard pattern's folder (OUT may hold neither)."""
    from openslip.data.sources import parse_spec

    _, path, _ = parse_spec(spec)
    if not path:
        return []
    p = Path(path).expanduser()
    return [p] if p.exists() else [p.parent]


def run_make_shards(args: argparse.Namespace) -> int:
    from openslip.data.formats.shards import INDEX_NAME, make_shards
    from openslip.data.skips import SkipCounter
    from openslip.outputs import check_output_dir

    if args.shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {args.shard_size}")
    if args.image_size is not None and args.image_size < 1:
        raise DataError(f"--image-size must be >= 1, got {args.image_size}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    own = re.compile(rf"\.?shard-\d{{6}}\.tar(\.tmp\d*)?|\.?{re.escape(INDEX_NAME)}(\.tmp\d*)?")
    check_output_dir(out, option="OUT", own=own.fullmatch, sources=_source_paths(args.src), force_flag="--overwrite")
    shards = [p for p in out.glob("shard-*.tar") if own.fullmatch(p.name)] if out.is_dir() else []
    if (shards or (out / INDEX_NAME).exists()) and not args.overwrite:
        raise DataError(f"{out} already holds shards; pass --overwrite to replace them")
    for old in shards:  # --overwrite: the shards of an earlier make-shards, nothing else
        old.unlink()
    source = _open(args)
    counter = SkipCounter()

    def progress(done: int, total: int) -> None:
        if done % 10_000 == 0:
            print(f"  {done:,} / {total:,} samples", file=sys.stderr)

    index = make_shards(
        source,
        out,
        shard_size=args.shard_size,
        image_size=args.image_size,
        shuffle=not args.no_shuffle,
        seed=args.seed,
        counter=counter,
        progress=progress,
    )
    print(f"wrote {len(index['shards'])} shards, {index['samples']:,} samples to {out} ({INDEX_NAME} lists them)")
    print(counter.summary())
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from openslip.data.formats.shards import ShardSource
    from openslip.data.skips import BadSample, SkipCounter

    if args.n < 0 or args.scan < 0:
        raise DataError("--n and --scan must be >= 0")
    if args.output:
        from openslip.outputs import check_output_file

        check_output_file(args.output, option="--output", sources=_source_paths(args.src))
    source = _open(args)
    total = len(source)
    kind = "shards" if isinstance(source, ShardSource) else type(source).__name__
    print(f"source: {getattr(source, 'description', args.src)}")
    print(f"format: {kind}" + (f" ({len(source.urls)} shards)" if isinstance(source, ShardSource) else ""))
    print(f"samples: {total:,}")

    limit = total if args.scan == 0 else min(total, max(args.scan, args.n))
    counter = SkipCounter()

    def bad_shard(reason: str, detail: str) -> None:
        counter.add_seen()
        counter.skip(reason)
        print(f"warning: {detail}", file=sys.stderr)

    if isinstance(source, ShardSource):
        samples: Any = (s for i in range(len(source.urls)) for s in source.iter_shard(i, on_error=bad_shard))
    else:
        samples = _records(source, total)
    good: list[tuple[Any, list[str]]] = []
    sizes: list[tuple[int, int]] = []
    caption_words: list[int] = []
    first_bad: BadSample | None = None  # named when nothing is readable
    for n, sample in enumerate(samples):
        if n >= limit:
            break
        counter.add_seen()
        try:
            if isinstance(sample, BadSample):
                raise sample
            captions = sample.clean_captions()
            image = sample.load_image(counter=counter)
        except BadSample as bad:
            counter.skip(bad.reason)
            first_bad = first_bad or bad
            continue
        sizes.append(image.size)
        caption_words.extend(len(c.split()) for c in captions)
        if len(good) < args.n:
            good.append((image, captions))
    print(f"scanned: {counter.seen:,} samples; {counter.summary()}")
    if counter.seen and not sizes:  # a source training would refuse at once: not a report that ends in success
        example = f"; e.g. {first_bad}" if first_bad is not None else ""
        hint = ""
        if first_bad is not None and first_bad.reason == "missing_file" and not isinstance(source, ShardSource):
            hint = "; relative image paths are read from the manifest's folder: give --root DIR where the images are"
        raise DataError(f"none of the {counter.seen:,} scanned samples is usable{example}{hint}")
    if sizes:
        widths = sorted(w for w, _ in sizes)
        heights = sorted(h for _, h in sizes)
        print(
            f"image size: width {widths[0]}-{widths[-1]} (median {statistics.median(widths):g}), "
            f"height {heights[0]}-{heights[-1]} (median {statistics.median(heights):g})"
        )
        print(
            f"caption words: {min(caption_words)}-{max(caption_words)} "
            f"(median {statistics.median(caption_words):g}, {len(caption_words) / len(sizes):.2g} captions/sample)"
        )
    if args.output:
        if not good:
            raise DataError(f"no readable sample to draw ({counter.summary()})")
        path = write_grid(good, args.output, cell=args.image_size)
        print(f"grid: {path}")
    return 0


def _records(source: Any, total: int) -> Iterator[Any]:
    """Each record of a map-style source, or the ``BadSample`` that building it raised (a folder's sidecar caption
    is read when its record is built: a caption that is a FIFO or a folder is counted, as training counts it)."""
    from openslip.data.skips import BadSample

    for i in range(total):
        try:
            yield source.record(i)
        except BadSample as bad:
            yield bad


def write_grid(samples: list[tuple[Any, list[str]]], output: str | Path, *, cell: int = 128) -> Path:
    """A PNG with one row per sample: the image, its three training views when ``SLIPTransform`` is available,
    and the first caption(s)."""
    from PIL import Image, ImageDraw, ImageFont

    from openslip.data.epoch_plan import preserve_rng, seed_all

    transform = None
    try:
        from openslip.data.augment.views import SLIPTransform
    except ImportError:
        SLIPTransform = None  # noqa: N806
    if SLIPTransform is not None:
        transform = SLIPTransform(cell)

    text_width, pad = 360, 6
    rows = []
    with preserve_rng():
        seed_all(0)
        for image, captions in samples:
            tiles = [_fit(image, cell)]
            if transform is not None:
                views = transform(image)
                if not isinstance(views, dict):
                    views = {"image": views}
                config = getattr(transform, "config", None)
                mean, std = getattr(config, "mean", None), getattr(config, "std", None)
                tiles.extend(_tensor_tile(v, cell, mean, std) for v in views.values())
            rows.append((tiles, captions))
    ncols = max(len(t) for t, _ in rows)
    width = ncols * (cell + pad) + text_width
    height = len(rows) * (cell + pad) + pad
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for r, (tiles, captions) in enumerate(rows):
        y = pad + r * (cell + pad)
        for c, tile in enumerate(tiles):
            grid.paste(tile, (pad + c * (cell + pad) + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
        lines: list[str] = []
        for caption in captions[:3]:
            lines.extend(textwrap.wrap(caption, width=55)[:3] or [""])
        draw.multiline_text((ncols * (cell + pad) + pad, y), "\n".join(lines[:9]), fill=(0, 0, 0), font=font)
    output = Path(output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(output, format="PNG")
    return output


def _fit(image: Any, cell: int) -> Any:
    thumb = image.copy()
    thumb.thumbnail((cell, cell))
    return thumb


def _tensor_tile(view: Any, cell: int, mean: Any = None, std: Any = None) -> Any:
    """A normalised [3, H, W] float view as an image: un-normalised with the transform's mean / std when it
    has them, else min-max rescaled."""
    import numpy as np
    import torch
    from PIL import Image

    t = torch.as_tensor(view).detach().float()
    if t.ndim == 3 and t.shape[0] in (1, 3):
        t = t.permute(1, 2, 0)
    if mean is not None and std is not None and t.ndim == 3 and t.shape[2] == len(mean) == len(std):
        t = (t * torch.tensor(std) + torch.tensor(mean)).clamp(0, 1)
    else:
        lo, hi = float(t.min()), float(t.max())
        t = (t - lo) / (hi - lo if hi > lo else 1.0)
    arr = (t * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return _fit(Image.fromarray(np.ascontiguousarray(arr)), cell)
