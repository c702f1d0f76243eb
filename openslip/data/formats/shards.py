"""WebDataset tar shards in the img2dataset layout: reading (``ShardSource``) and writing (``make_shards``).

A shard is a tar file whose members are grouped into samples by key: ``000000042.jpg``,
``000000042.txt``, ``000000042.json`` make one sample (the key is the member name up to the first dot of
its base name, as in WebDataset). The image is the first of ``.jpg .jpeg .png .webp`` (then any other
image suffix); the captions are, in order of preference, the ``captions`` list of the ``.json``, the
``.txt`` (one caption), or the ``caption`` / ``text`` field of the ``.json``.

Shards are named by a brace pattern (``data-{000..009}.tar``, ``{a,b}``), a glob, several specs joined
by ``::``, a list, or a folder written by ``make_shards`` (its ``index.json`` lists the shards with their
sample counts, which the loader needs to give every rank the same number of batches; without an index the
tar headers are scanned once). Local files are read with ``tarfile`` (the position inside a shard is
exact, which makes resumption exact); URLs and ``pipe:`` specs go through ``webdataset.gopen``.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import itertools
import json
import os
import re
import tarfile
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from openslip.data.formats.decode import (
    DEFAULT_DECODE,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodeOptions,
    clean_captions,
    decode_image,
    read_bytes,
)
from openslip.data.skips import BadSample, SkipCounter
from openslip.errors import DataError
from openslip.files import DOCUMENT_BYTES, FileError, check_regular, is_regular, open_regular, read_text
from openslip.weights.atomic import atomic_file, write_bytes

INDEX_NAME = "index.json"
INDEX_FORMAT = "openslip-shards/1"
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
REMOTE_PREFIXES = ("http://", "https://", "pipe:", "s3://", "gs://")


# ---------------------------------------------------------------------------------------------------------------
# Shard specs
# ---------------------------------------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..009}`` numeric ranges (zero padding kept) and ``{a,b,c}`` alternatives, left to right."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        lo_s, hi_s = rng.groups()
        lo, hi = int(lo_s), int(hi_s)
        width = len(lo_s) if lo_s.startswith("0") and len(lo_s) > 1 else 0
        step = 1 if hi >= lo else -1
        options = [f"{v:0{width}d}" for v in range(lo, hi + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        options = ["{" + body + "}"]  # not a pattern: keep the braces literally
        return [head + options[0] + t for t in expand_braces(tail)]
    return [head + opt + t for opt in options for t in expand_braces(tail)]


def looks_like_shard_spec(spec: str) -> bool:
    """True for ``*.tar`` paths and patterns, brace patterns, ``::`` lists and remote shard URLs."""
    if "::" in spec or spec.startswith(REMOTE_PREFIXES):
        return True
    if re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", spec):
        return True
    return spec.lower().endswith((".tar", ".tar.gz", ".tgz"))


REACH_TIMEOUT_S = 10.0


@functools.lru_cache(maxsize=64)
def check_reachable(url: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail within seconds, with one line, when an http(s) shard cannot be fetched (no network, a refused
    connection, an unknown host, HTTP 404), rather than after the reader's retries as a confusing later error."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as err:
        if err.code in (403, 405, 501):  # some servers refuse HEAD; the reader's GET will tell
            return
        raise DataError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(
            f"{url}: cannot reach it ({reason}); check the network, or download the shards and pass local paths"
        ) from None


def expand_shard_spec(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The shard URLs named by ``spec`` (see the module docstring); local ones must exist."""
    if isinstance(spec, (list, tuple)):
        return [u for s in spec for u in expand_shard_spec(s)]
    spec = os.fspath(spec)
    if "::" in spec:
        return [u for s in spec.split("::") if s for u in expand_shard_spec(s)]
    if spec.startswith(REMOTE_PREFIXES):
        urls = expand_braces(spec)
        if urls[0].startswith(("http://", "https://")):
            check_reachable(urls[0])
        return urls
    p = Path(spec).expanduser()
    if p.is_dir():
        index = read_index(p)
        if index is not None:  # a shard it lists that is not a regular file is a counted bad_shard when read
            return [str(p / s["name"]) for s in index["shards"]]
        urls = _regular_files(sorted(glob.glob(str(p / "*.tar"))), str(p / "*.tar"))
        if not urls:
            raise DataError(f"{p}: no *.tar shards and no {INDEX_NAME}")
        return urls
    urls: list[str] = []
    for pattern in expand_braces(str(p)):
        if glob.has_magic(pattern):
            matches = _regular_files(sorted(glob.glob(pattern)), pattern)
            if not matches:
                raise DataError(f"no shards match {pattern}")
            urls.extend(matches)
        else:
            urls.append(pattern)
    missing = [u for u in urls if not os.path.exists(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"no such shard: {missing[0]}{more}")
    for url in urls:  # a shard named one by one must be a regular file: a FIFO would block its reader
        check_regular(url, error=DataError)
    return urls


def _regular_files(paths: list[str], pattern: str) -> list[str]:
    """The regular files among a pattern's matches; the others (a FIFO or a folder named *.tar) are left out
    with one warning that counts them, never opened."""
    kept = [u for u in paths if is_regular(u)]
    left = [u for u in paths if u not in set(kept)]
    if left:
        warnings.warn(
            f"{pattern}: left out {len(left)} match(es) that are not regular files ({left[0]}"
            + (f" and {len(left) - 1} more)" if len(left) > 1 else ")"),
            stacklevel=3,
        )
    return kept


def read_index(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``index.json`` written by ``make_shards`` in ``folder``, or None when there is none."""
    path = Path(folder) / INDEX_NAME
    if not path.exists():
        return None
    try:
        index = json.loads(read_text(path, limit=DOCUMENT_BYTES, error=DataError))
        shards = index["shards"]
        if not all(isinstance(s["name"], str) and int(s["samples"]) >= 0 for s in shards):
            raise ValueError("bad shard entry")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a valid shard index: {err}") from None
    return index


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ShardSample:
    """One sample of a shard: its members' bytes by suffix (lower case, after the key's first dot)."""

    key: str
    shard: int
    position: int
    files: dict[str, bytes] = field(default_factory=dict)
    too_large: str = ""
    """Names of members left unread because they exceed the byte limit (the sample is skipped as too_large_file)."""

    @property
    def id(self) -> int:
        """A unique integer id: shard index in the high 32 bits, position in the shard in the low 32."""
        return (self.shard << 32) | self.position

    def image_bytes(self) -> bytes:
        if self.too_large:
            raise BadSample("too_large_file", f"{self.key}: {self.too_large.rstrip('; ')}")
        for suffix in IMAGE_SUFFIXES:
            if suffix in self.files:
                return self.files[suffix]
        for suffix, data in self.files.items():
            if suffix.rsplit(".", 1)[-1] in IMAGE_SUFFIXES:
                return data
        raise BadSample("missing_image", self.key)

    def raw_captions(self) -> Any:
        if self.too_large:
            raise BadSample("too_large_file", f"{self.key}: {self.too_large.rstrip('; ')}")
        meta = None
        if "json" in self.files:
            try:
                meta = json.loads(self.files["json"].decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                meta = None
        if isinstance(meta, dict) and isinstance(meta.get("captions"), list):
            return meta["captions"]
        if "txt" in self.files:
            return self.files["txt"]
        if isinstance(meta, dict):
            for key in ("caption", "text"):
                if key in meta:
                    return meta[key]
        return None

    def load_image(self, options: DecodeOptions = DEFAULT_DECODE, *, counter: SkipCounter | None = None) -> Any:
        return decode_image(self.image_bytes(), options, counter=counter)

    def clean_captions(self) -> list[str]:
        return clean_captions(self.raw_captions())


def split_member_name(name: str) -> tuple[str, str] | None:
    directory, _, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:
        return None  # hidden files (e.g. macOS "._x") and suffix-less members are not sample parts
    stem, _, suffix = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), suffix.lower()


class ShardSource:
    """Tar shards read as streams of ``ShardSample``; ``sizes`` holds the sample count per shard when known."""

    def __init__(self, spec: str | os.PathLike | Sequence[str], *, sizes: Sequence[int] | None = None) -> None:
        self.spec = spec if isinstance(spec, str) else str(spec) if isinstance(spec, os.PathLike) else list(spec)
        self.urls = expand_shard_spec(spec)
        if not self.urls:
            raise DataError(f"no shards in {spec}")
        self.sizes: list[int] | None = list(sizes) if sizes is not None else _sizes_from_indexes(self.urls)
        if self.sizes is not None and len(self.sizes) != len(self.urls):
            raise DataError(f"{len(self.sizes)} shard sizes given for {len(self.urls)} shards")
        self.description = str(self.spec)
        # Set by open_sources for a weighted list (SPEC::WEIGHT): the weight of each listed source, and the source
        # of each shard. The loader then draws shards by them, with replacement (data.resampled=true).
        self.weights: list[float] | None = None
        self.part_of: list[int] | None = None

    def __repr__(self) -> str:
        total = f", {sum(self.sizes):,} samples" if self.sizes is not None else ""
        return f"ShardSource({len(self.urls)} shards{total})"

    def __len__(self) -> int:
        """Total number of samples (scans the tar headers once if no index gave the sizes)."""
        return sum(self.ensure_sizes())

    def ensure_sizes(self) -> list[int]:
        if self.sizes is None:
            self.sizes = [count_samples(u) for u in self.urls]
        return self.sizes

    def iter_shard(
        self,
        shard: int,
        *,
        skip: int = 0,
        on_error: Callable[[str, str], None] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> Iterator[ShardSample]:
        """Samples of shard ``shard`` from position ``skip`` on (skipped samples are not read, only their headers).

        A member larger than ``max_bytes`` (its size is in the tar header) is not read; its sample comes with
        ``too_large`` set and raises ``BadSample("too_large_file")`` when its image or captions are asked for.

        A shard that cannot be opened or ends in the middle is reported once to ``on_error("bad_shard",
        detail)`` (a warning without a callback) and ends the iteration; samples already read are kept.
        """
        url = self.urls[shard]
        position = skip
        try:
            for key, files, too_large in _iter_tar_groups(url, skip=skip, max_bytes=max_bytes):
                yield ShardSample(key=key, shard=shard, position=position, files=files, too_large=too_large)
                position += 1
        except FileError as err:  # not a regular file (a FIFO, a folder), or missing: never opened
            detail = str(err)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            detail = f"{url}: {type(err).__name__}: {err}"
        else:
            expected = self.sizes[shard] if self.sizes is not None else None
            if expected is None or position >= expected:
                return
            # A copy cut at a member boundary reads as a clean, shorter tar; the index tells.
            detail = f"{url}: ended after {position} of the {expected} samples its index lists"
        detail = " ".join(detail.split())  # tarfile's messages span lines
        if on_error is not None:
            on_error("bad_shard", detail)
        else:
            warnings.warn(f"skipping the rest of a bad shard: {detail}", stacklevel=2)

    def __iter__(self) -> Iterator[ShardSample]:
        for i in range(len(self.urls)):
            yield from self.iter_shard(i)


@contextlib.contextmanager
def _open_stream(url: str) -> Iterator[tarfile.TarFile]:
    if url.startswith(REMOTE_PREFIXES):
        try:
            from webdataset.gopen import gopen
        except ImportError as err:
            raise DataError(f"reading remote shards needs the 'webdataset' package: {err}") from None
        stream = gopen(url, "rb")
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                yield tar
        finally:
            stream.close()
    else:
        with open_regular(url, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
            yield tar  # seekable: skipping a member seeks over its data


def _iter_tar_groups(
    url: str, *, skip: int = 0, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[tuple[str, dict[str, bytes], str]]:
    """(key, {suffix: bytes}, members over ``max_bytes``) for consecutive members sharing a key; the first
    ``skip`` groups are not read, nor is any member over ``max_bytes`` (judged by its header's size)."""
    with _open_stream(url) as tar:
        current: str | None = None
        files: dict[str, bytes] = {}
        too_large = ""
        index = -1
        for member in tar:
            if not member.isfile():
                continue
            parts = split_member_name(member.name)
            if parts is None:
                continue
            key, suffix = parts
            if key != current:
                if current is not None and index >= skip:
                    yield current, files, too_large
                current, files, too_large, index = key, {}, "", index + 1
            if index >= skip:
                if member.size > max_bytes:
                    too_large += f"{member.name} is {member.size:,} bytes > max_bytes={max_bytes:,}; "
                    continue
                f = tar.extractfile(member)
                files[suffix] = f.read() if f is not None else b""
        if current is not None and index >= skip:
            yield current, files, too_large


def count_samples(url: str) -> int:
    """Number of samples (distinct consecutive keys) in a shard, reading only the tar headers."""
    n = 0
    current = None
    try:
        with _open_stream(url) as tar:
            for member in tar:
                parts = split_member_name(member.name) if member.isfile() else None
                if parts is not None and parts[0] != current:
                    current = parts[0]
                    n += 1
    except (tarfile.TarError, OSError, EOFError, FileError) as err:
        warnings.warn(f"cannot count the samples of {url}: {' '.join(str(err).split())}", stacklevel=2)
    return n


def _sizes_from_indexes(urls: Sequence[str]) -> list[int] | None:
    """Shard sizes from the ``index.json`` next to the shards, when it lists every one of them."""
    sizes: dict[str, int] = {}
    for folder in {os.path.dirname(os.path.abspath(u)) for u in urls if not u.startswith(REMOTE_PREFIXES)}:
        index = read_index(folder)
        if index is not None:
            for s in index["shards"]:
                sizes[os.path.join(folder, s["name"])] = int(s["samples"])
    try:
        return [sizes[os.path.abspath(u)] for u in urls]
    except KeyError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible archives: same input, same bytes
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def _encode_image(record: Any, image_size: int | None, max_pixels: int, counter: SkipCounter) -> tuple[bytes, str]:
    """(bytes, suffix): the original bytes when they are already a clean RGB JPEG/PNG/WebP and no resize is asked,
    else the decoded (converted, resized) image as JPEG quality 95."""
    if isinstance(record, ShardSample):
        raw: Any = record.image_bytes()
    else:
        raw = record.image
        if callable(raw) and not isinstance(raw, Image.Image):
            raw = raw()
        if isinstance(raw, (str, os.PathLike)):
            raw = read_bytes(raw)
    local = SkipCounter()
    img = decode_image(raw, DecodeOptions(max_pixels=max_pixels), counter=local)
    counter.update({f"converted/{k}": v for k, v in local.converted.items()})
    fmt = img.format if not local.converted else None
    if image_size is None and isinstance(raw, (bytes, bytearray)) and fmt in ("JPEG", "PNG", "WEBP"):
        return bytes(raw), {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    if image_size is not None and min(img.size) > image_size:
        w, h = img.size
        scale = image_size / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    return out.getvalue(), "jpg"


def make_shards(
    source: Any,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 1000,
    image_size: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    counter: SkipCounter | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``source`` as ``out_dir/shard-000000.tar``, ... plus ``out_dir/index.json``; returns the index.

    Every sample is decoded and checked on the way (bad ones are skipped and counted in ``counter`` and in
    the index), so training from the shards never meets them. Images that are clean RGB JPEG/PNG/WebP are
    copied byte for byte; converted or resized ones (``image_size``: shorter side, downscale only) are
    stored as JPEG quality 95. A map-style source is written in a random order from ``seed`` when
    ``shuffle`` (shards are read sequentially, so this is the within-shard shuffle); a shard source keeps
    its order. Members: ``KEY.jpg|png|webp``, ``KEY.txt`` (first caption), ``KEY.json`` (``key``, ``id``,
    ``caption``, ``captions``). Shards are written to a temporary name and renamed when complete.
    """
    if shard_size < 1:
        raise DataError(f"shard size must be >= 1, got {shard_size}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    counter = counter if counter is not None else SkipCounter()

    if isinstance(source, ShardSource):
        total = sum(source.sizes) if source.sizes is not None else -1
        records: Iterator[Any] = iter(source)
    else:
        total = len(source)
        order = np.random.default_rng(seed).permutation(total) if shuffle else np.arange(total)
        records = (source.record(int(i)) for i in order)

    done = 0

    def usable() -> Iterator[tuple[Any, list[str], bytes, str]]:
        """(record, captions, image bytes, suffix) of each sample that decodes; the others are counted."""
        nonlocal done
        for record in records:
            done += 1
            counter.add_seen()
            try:
                captions = record.clean_captions()
                data, suffix = _encode_image(record, image_size, max_pixels, counter)
            except BadSample as bad:
                counter.skip(bad.reason)
                continue
            yield record, captions, data, suffix

    samples = usable()
    shards: list[dict[str, Any]] = []
    written = 0
    while (first := next(samples, None)) is not None:
        name = f"shard-{len(shards):06d}.tar"
        shards.append({"name": name, "samples": 0})
        # written whole or not at all: a failure or a kill never leaves a partial shard under its name
        with atomic_file(out / name) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for record, captions, data, suffix in itertools.chain([first], itertools.islice(samples, shard_size - 1)):
                key = f"{written:09d}"
                record_id = record.key if isinstance(record, ShardSample) else record.id
                meta = {"key": key, "id": str(record_id), "caption": captions[0], "captions": captions}
                _add_member(tar, f"{key}.{suffix}", data)
                _add_member(tar, f"{key}.txt", captions[0].encode("utf-8"))
                _add_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                shards[-1]["samples"] += 1
                written += 1
                if progress is not None:
                    progress(done, total)
    if not shards:
        raise DataError(f"no usable samples to write ({counter.summary()})")

    index = {
        "format": INDEX_FORMAT,
        "shards": shards,
        "samples": written,
        "source": str(getattr(source, "description", source)),
        "image_size": image_size,
        "skipped": counter.state_dict(),
    }
    write_bytes(out / INDEX_NAME, (json.dumps(index, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return index
