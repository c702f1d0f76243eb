"""Data sources: one interface over every image-caption format, and ``open_source(spec)``.

The formats: docs/DESIGN.md, 'Data formats'.

A **map-style source** (manifests, folders, the reference's metadata formats, the demo world) is an
indexable list of ``Record``\\ s: ``len(source)`` and ``source.record(i)``. A **shard source**
(``openslip.data.formats.shards.ShardSource``) is read as streams of tar members instead. Records are cheap
descriptions; decoding happens in ``Record.load_image()``, inside loader workers, where a bad file raises
``BadSample`` and is counted rather than crashing the run.

``open_source`` picks the format from the spec. Formats are entries of the ``SOURCE_FORMATS`` registry
(name -> ``opener(path: str | None, **options) -> source``), so other modules add formats without editing
this file: the built-in demo world registers ``"demo"`` (imported on first use, see ``_LAZY_FORMATS``).

Spec grammar::

    PATH                                  format detected from the path (see ``detect_format``)
    FORMAT:PATH                           an explicit format, e.g. ``coco:/data/captions_train2017.json``
    FORMAT                                a format that needs no path, e.g. ``demo``
    SPEC?key=value&key=value              options for the opener, e.g. ``...json?root=/data/coco``
    SPEC::WEIGHT                          in a list of two or more sources: the share of the samples drawn from
                                          this one (``data.train=[a.csv::0.7,b.csv::0.3]``, see ``split_weights``)

``::`` cannot clash with the rest of the grammar: ``FORMAT:PATH`` and shard URLs (``pipe:``, ``http://``) use
one colon, and the weight is cut off the end first. A ``::`` followed by text with a ``/`` (an IPv6 address in
a URL, ``http://[::1]/a.tar``) is not a weight.

``open_sources(specs)`` opens a list of specs as one source (``data.train=[a.csv,photos/]``): map-style
sources are concatenated into a ``ConcatSource``, shard sources into one ``ShardSource``, each with the
sources' weights when they have some. A mix of the two is refused (see ``open_sources``).
"""

from __future__ import annotations

import bisect
import dataclasses
import importlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from openslip import files
from openslip.data.formats.manifest import FolderSource, ManifestSource
from openslip.data.formats.records import (
    IMAGE_EXTENSIONS,
    BaseMapSource,
    Record,
)
from openslip.data.formats.reference import open_reference, sniff_reference_pickle
from openslip.data.formats.shards import ShardSource, looks_like_shard_spec
from openslip.errors import DataError
from openslip.registry import Registry, UnknownNameError

# ---------------------------------------------------------------------------------------------------------------
# Format registry and open_source
# ---------------------------------------------------------------------------------------------------------------

SourceOpener = Callable[..., Any]
SOURCE_FORMATS: Registry[SourceOpener] = Registry("data format")

# Formats defined by modules outside this package's readers; imported when first named.
_LAZY_FORMATS: dict[str, str] = {"demo": "openslip.data.demo.world"}


def _open_manifest(path: str | None, **options: Any):
    return ManifestSource(_need_path(path, "manifest"), **options)


def _open_folder(path: str | None, **options: Any):
    return FolderSource(_need_path(path, "folder"), **options)


def _open_shards(path: str | None, **options: Any):
    return ShardSource(_need_path(path, "shards"), **options)


def _reference_opener(kind: str) -> SourceOpener:
    def opener(path: str | None, **options: Any):
        return open_reference(kind, _need_path(path, kind), **options)

    opener.__name__ = f"open_{kind}"
    return opener


SOURCE_FORMATS.register("manifest", _open_manifest, aliases=("csv", "tsv", "jsonl"))
SOURCE_FORMATS.register("folder", _open_folder, aliases=("dir", "imagefolder-captions"))
SOURCE_FORMATS.register("shards", _open_shards, aliases=("webdataset", "wds", "tar"))
for _kind in ("yfcc15m", "cc3m", "cc12m", "coco", "redcaps"):
    SOURCE_FORMATS.register(_kind, _reference_opener(_kind))


def _need_path(path: str | None, fmt: str) -> str:
    if not path:
        raise DataError(f"data format {fmt!r} needs a path, e.g. '{fmt}:/path/to/data'")
    return path


def parse_spec(spec: str) -> tuple[str | None, str | None, dict[str, str]]:
    """Split ``[FORMAT:]PATH[?k=v&...]`` into (format or None, path or None, options)."""
    options: dict[str, str] = {}
    if "?" in spec:
        head, _, query = spec.rpartition("?")
        pairs = [p for p in query.split("&") if p]
        if pairs and all("=" in p for p in pairs):
            spec = head
            for pair in pairs:
                key, _, value = pair.partition("=")
                options[key] = value
    if ":" in spec:
        prefix, _, rest = spec.partition(":")
        # A one-letter prefix is a Windows drive; "pipe:", "http:" etc. are shard URLs, not formats.
        if len(prefix) > 1 and (prefix in SOURCE_FORMATS or prefix.lower() in _LAZY_FORMATS):
            return prefix.lower(), rest or None, options
    if spec.lower() in SOURCE_FORMATS or spec.lower() in _LAZY_FORMATS:
        return spec.lower(), None, options
    return None, spec, options


WEIGHT_MARK = "::"


def split_weight(spec: str) -> tuple[str, str | None]:
    """``SPEC::WEIGHT`` -> (SPEC, the weight as written); a spec without a weight -> (spec, None)."""
    head, mark, tail = spec.rpartition(WEIGHT_MARK)
    if not mark or not head or "/" in tail:  # "http://[::1]/a.tar" holds an address, not a weight
        return spec, None
    return head, tail.strip()


def split_weights(specs: Sequence[str], what: str = "data.train") -> tuple[list[str], list[float] | None]:
    """Specs without their ``::WEIGHT`` suffixes, and the weights (None when no spec has one).

    Raises:
        DataError: one line each for a weight that is not a positive finite number, weights on only some of the
            specs, or a weight on a single source (it would be the whole of the samples anyway).
    """
    plain: list[str] = []
    written: list[str | None] = []
    for spec in specs:
        head, weight = split_weight(spec)
        plain.append(head)
        written.append(weight)
    if all(w is None for w in written):
        return plain, None
    if len(specs) == 1:
        raise DataError(
            f"{what}={specs[0]}: a weight shares the samples among two or more sources; one source needs none "
            f"(drop '::{written[0]}')"
        )
    missing = next((i for i, w in enumerate(written) if w is None), None)
    if missing is not None:
        raise DataError(
            f"{what}[{missing}] ({specs[missing]}) has no weight while others have: give every source one "
            "(SPEC::WEIGHT) or none"
        )
    weights = []
    for i, w in enumerate(written):
        try:
            value = float(w)  # type: ignore[arg-type]
        except ValueError:
            raise DataError(
                f"{what}[{i}] ({specs[i]}): weight {w!r} is not a number (SPEC::WEIGHT, e.g. ::0.7)"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise DataError(f"{what}[{i}] ({specs[i]}): weight {w} must be a positive number")
        weights.append(value)
    return plain, weights


def _ensure_format(name: str) -> None:
    if name not in SOURCE_FORMATS and name in _LAZY_FORMATS:
        try:
            importlib.import_module(_LAZY_FORMATS[name])
        except ImportError as err:
            raise DataError(f"data format {name!r} is not available: {err}") from None


def open_source(spec: str | os.PathLike, *, format: str | None = None, **options: Any):  # noqa: A002
    """Open a dataset: a map-style source (``len`` + ``record(i)``) or a ``ShardSource``.

    Args:
        spec: a path, a shard pattern, ``FORMAT:PATH`` or a format name (see the module docstring).
        format: force a format (a name in ``SOURCE_FORMATS``) instead of detecting it.
        **options: passed to the format's opener (e.g. ``root=``, ``image_key=``, ``caption_keys=``).

    Raises:
        DataError: the path does not exist, the format is unknown, or the file cannot be parsed.
    """
    fmt, path, spec_options = parse_spec(os.fspath(spec)) if format is None else (format, os.fspath(spec), {})
    options = {**spec_options, **options}
    if fmt is None:
        fmt = detect_format(path)
    fmt = fmt.lower()
    _ensure_format(fmt)
    try:
        opener = SOURCE_FORMATS.get(fmt)
    except UnknownNameError as err:
        raise DataError(str(err)) from None
    return opener(path, **options)


def detect_format(path: str | None) -> str:
    """The format name for a path: shard patterns, manifests by extension, folders, reference metadata."""
    if not path:
        raise DataError("empty data path")
    if looks_like_shard_spec(path):
        return "shards"
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"no such file or directory: {path}")
    if p.is_dir():
        if (p / "index.json").is_file() or (any(p.glob("*.tar")) and not _has_images(p)):
            return "shards"
        return "folder"
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv", ".jsonl"):
        return "manifest"
    if suffix == ".json":
        return _sniff_json(p)
    if suffix in (".pkl", ".pickle", ".npy"):
        return sniff_reference_pickle(p)
    raise DataError(
        f"cannot tell the data format of {path}: expected a .csv/.tsv/.jsonl manifest, a folder, shards "
        f"(*.tar or a brace pattern), reference metadata (.pkl/.npy/.json), or FORMAT:PATH with FORMAT one of "
        f"{', '.join(SOURCE_FORMATS.names())}"
    )


def _has_images(folder: Path) -> bool:
    for _dirpath, _dirs, names in os.walk(folder):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in names):
            return True
    return False


def _sniff_json(path: Path) -> str:
    """An array is read up to its first item only (a manifest is streamed, never read whole); an object (COCO,
    RedCaps) is read whole, within ``files.METADATA_BYTES``."""
    with files.open_regular(path, "r", error=DataError, encoding="utf-8-sig") as f:
        head = f.read(1 << 12).lstrip()
        if head.startswith("["):
            f.seek(0)
            first = next(iter(files.iter_json_array(f, where=str(path), error=DataError)), None)
            return "redcaps" if isinstance(first, dict) and "subreddit" in first else "manifest"
    data = files.read_json(path, limit=files.METADATA_BYTES, error=DataError)
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return "coco"
    anns = data.get("annotations") if isinstance(data, dict) else data
    if isinstance(anns, list) and anns and isinstance(anns[0], dict) and "subreddit" in anns[0]:
        return "redcaps"
    if isinstance(data, list):
        return "manifest"  # a JSON array of manifest rows
    raise DataError(f"{path}: a JSON file that is neither COCO captions, RedCaps annotations nor a manifest")


# ---------------------------------------------------------------------------------------------------------------
# Several sources as one
# ---------------------------------------------------------------------------------------------------------------


class ConcatSource(BaseMapSource):
    """Map-style sources read as one: index ``i`` is sample ``i - starts[k]`` of part ``k``.

    The loader's sample ids are indices into this source, so they stay unique across the parts; a record's
    ``id`` is prefixed with its part's name (``/data/a.csv#img/3.jpg``), so a reported sample names its file.

    With ``weights`` (one positive number per part) the loader draws each sample's part with probability
    ``weights[k] / sum(weights)`` instead of permuting all indices (``epoch_plan.epoch_order``); the length, hence
    the epoch, stays the total size.
    """

    def __init__(self, parts: Sequence[tuple[str, Any]], weights: Sequence[float] | None = None) -> None:
        if not parts:
            raise DataError("no sources to concatenate")
        self.names = [name for name, _ in parts]
        self.parts = [source for _, source in parts]
        self.sizes = [len(source) for source in self.parts]
        self.starts = [0]
        for size in self.sizes:
            self.starts.append(self.starts[-1] + size)
        self.weights = list(weights) if weights is not None else None
        if self.weights is not None:
            if len(self.weights) != len(self.parts):
                raise DataError(f"{len(self.weights)} weights for {len(self.parts)} sources")
            empty = next((n for n, size in zip(self.names, self.sizes, strict=True) if size == 0), None)
            if empty is not None:  # a positive weight on no samples: nothing could be drawn for its share
                raise DataError(f"{empty} has no samples, so its weight cannot be drawn")
        self.description = " + ".join(self.names)

    def __len__(self) -> int:
        return self.starts[-1]

    def part_of(self, i: int) -> tuple[int, int]:
        """(part, index inside the part) of sample ``i``; empty parts are never chosen."""
        k = bisect.bisect_right(self.starts, i) - 1
        return k, i - self.starts[k]

    def record(self, i: int) -> Record:
        k, j = self.part_of(i)
        rec = self.parts[k].record(j)
        return dataclasses.replace(rec, id=f"{self.names[k]}#{rec.id}")

    def __repr__(self) -> str:
        inner = ", ".join(f"{n} ({s:,})" for n, s in zip(self.names, self.sizes, strict=True))
        if self.weights is not None:
            inner += f"; weights {self.weights}"
        return f"ConcatSource({inner})"


def _dedup_key(spec: str) -> tuple[str | None, str | None, tuple[tuple[str, str], ...]]:
    """What a spec points at, for spotting the same source listed twice (``a.csv`` and ``./a.csv``)."""
    fmt, path, options = parse_spec(spec)
    if path and "://" not in path and not path.startswith("pipe:"):
        path = os.path.normpath(os.path.abspath(os.path.expanduser(path)))
    return fmt, path, tuple(sorted(options.items()))


def open_sources(
    specs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    format: str | None = None,  # noqa: A002
    options_for: Callable[[str], dict[str, Any]] | None = None,
    what: str = "data",
):
    """Open one spec, or several as one source (what ``data.train=[...]`` reads).

    One spec (or a list of one) gives exactly what ``open_source`` gives. Several map-style sources
    (manifests, folders, reference formats, the demo world) give a ``ConcatSource``; several shard sources
    give one ``ShardSource`` over all their shards. With ``SPEC::WEIGHT`` items (every item, or none) the
    result carries the weights: ``ConcatSource.weights``, or ``ShardSource.weights`` with ``ShardSource.part_of``
    (the item of each shard); the loader samples by them
    (docs/TRAINING.md, 'Weighted sources and resampled shards').
    Shards mixed with map-style sources are refused: the loader reads shards as per-worker streams and
    map-style sources by a global permutation, and one epoch cannot follow both rules; writing the map-style
    ones as shards (``openslip data make-shards``) makes them one kind.

    Args:
        specs: a spec or a list of specs (see the module docstring).
        format: force this format for every spec (``FORMAT:PATH`` sets one spec's format).
        options_for: spec -> extra opener options (the training pipeline sizes the demo world this way).
        what: the name used in error messages (``data.train``): errors say ``what[i]: ...``.

    Raises:
        DataError: an empty list, a spec listed twice (or a shard named by two specs), a spec that cannot be
            opened (the message names it), shards mixed with map-style sources, or bad weights (``split_weights``).
    """
    many = isinstance(specs, (list, tuple))
    items = [os.fspath(s) for s in specs] if many else [os.fspath(specs)]
    if not items:
        raise DataError(f"{what} is an empty list: name at least one data source")
    items, weights = split_weights(items, what)
    if len(items) == 1:
        return open_source(items[0], format=format, **(options_for(items[0]) if options_for else {}))
    seen: dict[Any, int] = {}
    for i, spec in enumerate(items):
        key = _dedup_key(spec)
        if key in seen:
            raise DataError(
                f"{what}[{i}] ({spec}) repeats {what}[{seen[key]}]: each source is read once per epoch; remove "
                "the duplicate (to read a source more often, give the sources weights: SPEC::WEIGHT)"
            )
        seen[key] = i
    opened = []
    for i, spec in enumerate(items):
        try:
            opened.append(open_source(spec, format=format, **(options_for(spec) if options_for else {})))
        except DataError as err:
            raise DataError(f"{what}[{i}]: {err}") from None
    shard_specs = [spec for spec, src in zip(items, opened, strict=True) if isinstance(src, ShardSource)]
    if not shard_specs:
        return ConcatSource(list(zip(items, opened, strict=True)), weights)
    if len(shard_specs) < len(items):
        other = next(spec for spec, src in zip(items, opened, strict=True) if not isinstance(src, ShardSource))
        raise DataError(
            f"{what} mixes shards ({shard_specs[0]}) with a map-style source ({other}), which one loader cannot "
            f"read in one epoch: write it as shards (openslip data make-shards {other} SHARD_DIR) and list SHARD_DIR"
        )
    urls: list[str] = []
    owner: dict[str, int] = {}
    for i, src in enumerate(opened):
        for url in src.urls:
            if url in owner:
                raise DataError(f"shard {url} is named by both {what}[{owner[url]}] and {what}[{i}]; name it once")
            owner[url] = i
            urls.append(url)
    # Sizes per part: an indexed part has them already, only the others are scanned (as the loader would).
    combined = ShardSource(urls, sizes=[n for src in opened for n in src.ensure_sizes()])
    combined.description = " + ".join(items)
    if weights is not None:
        combined.weights = weights
        combined.part_of = [i for i, src in enumerate(opened) for _ in src.urls]
    return combined
