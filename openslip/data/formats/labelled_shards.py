"""Labelled WebDataset shards for evaluation (docs/DESIGN.md, 'Data formats'): each sample is an image plus its class.

The layout is clip-benchmark's (and ``webdataset``'s usual one): members ``KEY.jpg`` (or png, webp, ...)
and ``KEY.cls`` (the class index as text) in local ``.tar`` files, with the class names, one per line, in a
``classnames.txt`` beside the shards or one folder up; ``KEY.json`` with ``"label"`` (an index or a class
name) works in place of ``.cls``. Class names given by the caller (``--classnames``, a catalog entry) take
precedence and fix the order the indices refer to.

An evaluation must see each sample exactly once on any number of ranks, so the shards are indexed into a
map-style source: one pass over the tar headers records where each image's bytes lie, and ``record(i)`` reads
just those bytes. That needs seekable, uncompressed local tars; anything else is a clear ``DataError``.
"""

from __future__ import annotations

import functools
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

from openslip.data.formats.class_lists import read_classnames
from openslip.data.formats.labelled import LabelledSource, index_labels
from openslip.data.formats.records import Record
from openslip.data.formats.shards import (
    IMAGE_SUFFIXES,
    REMOTE_PREFIXES,
    expand_shard_spec,
    looks_like_shard_spec,
    split_member_name,
)
from openslip.errors import DataError
from openslip.files import open_regular

CLASSNAMES_FILE = "classnames.txt"


def is_shard_set(spec: str | os.PathLike) -> bool:
    """True for shard patterns, ``.tar`` files, and folders holding ``.tar`` files but no sub-folders."""
    text = os.fspath(spec)
    if looks_like_shard_spec(text):
        return True
    p = Path(text).expanduser()
    return p.is_dir() and any(p.glob("*.tar")) and not any(c.is_dir() for c in p.iterdir())


def _read_member(url: str, offset: int, size: int) -> bytes:
    with open_regular(url, "rb") as f:  # refused (a counted skip) if the shard was swapped for a FIFO
        f.seek(offset)
        return f.read(size)


class ShardLabelledSource(LabelledSource):
    """A ``LabelledSource`` whose images are (shard, offset, size) spans instead of files."""

    def __init__(
        self,
        description: str,
        urls: list[str],
        spans: list[tuple[int, int, int]],
        keys: list[str],
        labels: list[int],
        classes: list[str],
    ) -> None:
        super().__init__(description, Path("."), keys, labels, classes)
        self.urls = urls
        self.spans = spans  # (shard index, byte offset, byte count) of each sample's image

    def record(self, i: int) -> Record:
        shard, offset, size = self.spans[i]
        image = functools.partial(_read_member, self.urls[shard], offset, size)  # picklable for loader workers
        return Record(id=self.paths[i], image=image, captions=None, label=self.labels[i])


def _label_of(files: dict[str, bytes], where: str) -> str:
    """The raw label text of one sample: its ``.cls`` member, else ``label`` in its ``.json``."""
    if "cls" in files:
        return files["cls"].decode("utf-8", "replace").strip()
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except ValueError:
            raise DataError(f"{where}: unreadable .json member") from None
        if isinstance(meta, dict) and "label" in meta:
            return str(meta["label"]).strip()
    raise DataError(f"{where}: no label (a .cls member, or 'label' in a .json member)")


def _index_shard(url: str, shard: int) -> list[tuple[str, tuple[int, int, int], str]]:
    """(key, image span, raw label) of every sample of one local uncompressed shard, from its headers."""
    if url.startswith(REMOTE_PREFIXES) or not url.lower().endswith(".tar"):
        raise DataError(f"{url}: evaluation shards must be local uncompressed .tar files (they are read by offset)")
    out: list[tuple[str, tuple[int, int, int], str]] = []
    try:
        with open_regular(url, "rb", error=DataError) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            groups: dict[str, dict] = {}  # insertion-ordered: the shard's sample order
            for member in tar:
                parts = split_member_name(member.name) if member.isfile() else None
                if parts is None:
                    continue
                key, suffix = parts
                groups.setdefault(key, {"files": {}, "span": None})
                if suffix in IMAGE_SUFFIXES and groups[key]["span"] is None:
                    groups[key]["span"] = (shard, member.offset_data, member.size)
                elif suffix in ("cls", "json"):
                    f = tar.extractfile(member)
                    groups[key]["files"][suffix] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(
            f"{url}: not a readable tar file ({type(err).__name__}: {' '.join(str(err).split())})"
        ) from None
    for key, g in groups.items():
        if g["span"] is None:
            raise DataError(f"{url}: sample {key} has no image member")
        out.append((key, g["span"], _label_of(g["files"], f"{url}: sample {key}")))
    return out


def _classnames_beside(urls: Sequence[str]) -> list[str] | None:
    first = Path(urls[0]).parent
    for folder in (first, first.parent):
        if (folder / CLASSNAMES_FILE).is_file():
            return read_classnames(folder / CLASSNAMES_FILE)
    return None


def labelled_shards(spec: str | os.PathLike, *, classes: Sequence[str] | None = None) -> ShardLabelledSource:
    """Index labelled shards (a pattern, a ``.tar`` file, or a folder of them); see the module docstring."""
    text = os.fspath(spec)
    p = Path(text).expanduser()
    urls = sorted(str(u) for u in p.glob("*.tar")) if p.is_dir() else expand_shard_spec(text)
    if not urls:
        raise DataError(f"no shards in {text}")
    rows = [row for shard, url in enumerate(urls) for row in _index_shard(url, shard)]
    if not rows:
        raise DataError(f"{text}: the shards hold no samples")
    names = list(classes) if classes is not None else _classnames_beside(urls)
    labels, names = index_labels([label for _, _, label in rows], names, text)
    return ShardLabelledSource(text, urls, [span for _, span, _ in rows], [key for key, _, _ in rows], labels, names)
