"""The records every image-caption format yields: ``Record`` (an id, an image to decode, captions), the
map-style source interface and its packed base (``PackedSource``, ids and captions in compact tables).

Formats (``manifest``, ``reference``, ``labelled``, the demo world) build on these; ``data/sources.py`` opens
them by name. Kept apart from the opening so that formats never import the module that imports them.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from openslip.data.formats.decode import DEFAULT_DECODE, DecodeOptions, ImageInput, clean_captions, decode_image
from openslip.data.skips import SkipCounter

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class Record:
    """One sample of a map-style source, not yet decoded.

    ``image`` is a file path, encoded bytes, a PIL image, or a zero-argument callable returning one of
    those; ``captions`` holds the raw captions (str or bytes; validated by ``clean_captions``).
    """

    id: str
    image: ImageInput
    captions: Any = field(default_factory=list)
    label: int | None = None

    def load_image(self, options: DecodeOptions = DEFAULT_DECODE, *, counter: SkipCounter | None = None) -> Image.Image:
        """8-bit RGB image, or ``BadSample`` (see ``decode_image``)."""
        return decode_image(self.image, options, counter=counter)

    def clean_captions(self) -> list[str]:
        """Usable captions, or ``BadSample`` (see ``decode.clean_captions``)."""
        return clean_captions(self.captions)


class BaseMapSource:
    """Shared behaviour: ``source[i]`` is ``source.record(i)``, negative indices, a readable ``repr``."""

    description: str = "source"

    def __len__(self) -> int:
        raise NotImplementedError

    def record(self, i: int) -> Record:
        raise NotImplementedError

    def __getitem__(self, i: int) -> Record:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {self.description} with {n} samples")
        return self.record(i)

    def __iter__(self):
        return (self.record(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description}, {len(self):,} samples)"


class StringTable:
    """An immutable list of strings packed into one numpy buffer plus offsets.

    Millions of Python ``str`` objects cost ~60 bytes each on top of their text and, worse, are copied
    page by page into every forked loader worker as their reference counts change. One buffer stays shared.
    Strings round-trip with ``surrogateescape``, so non-UTF-8 bytes survive until the caption check.
    """

    def __init__(self, strings: Iterable[str] = ()) -> None:
        built = StringTableBuilder()
        for s in strings:
            built.append(s)
        self._data, self._offsets = built.arrays()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._data[a:b].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class StringTableBuilder:
    """Appends strings to a growing buffer and builds the `StringTable` without a copy: a manifest's rows are
    packed as they are read, so a large manifest never exists as a list of Python strings as well."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._offsets = array("q", [0])

    def append(self, s: str) -> None:
        self._buf += s.encode("utf-8", "surrogateescape")
        self._offsets.append(len(self._buf))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(bytes, offsets) as read-only numpy views of the builder's own buffers (no copy)."""
        data = np.frombuffer(self._buf, dtype=np.uint8)
        offsets = np.frombuffer(self._offsets, dtype=np.int64)
        data.flags.writeable = False
        offsets.flags.writeable = False
        return data, offsets

    def build(self) -> StringTable:
        table = StringTable.__new__(StringTable)
        table._data, table._offsets = self.arrays()
        return table


# Several captions of one sample are stored joined by NUL in a StringTable.
CAPTION_SEP = "\x00"


def join_captions(captions: Sequence[Any]) -> str:
    """Pack captions into one string; bytes keep invalid UTF-8 as surrogate escapes (caught as bad later)."""
    return CAPTION_SEP.join(_caption_str(c).replace(CAPTION_SEP, " ") for c in captions)


def _caption_str(c: Any) -> str:
    if c is None or (isinstance(c, float) and c != c):  # None / NaN: an empty cell
        return ""
    if isinstance(c, (bytes, bytearray)):
        return bytes(c).decode("utf-8", "surrogateescape")
    return str(c)


def split_captions(joined: str) -> list[str]:
    return joined.split(CAPTION_SEP)


class PackedSource(BaseMapSource):
    """A map-style source held in StringTables: image paths (relative to ``root``), captions, optional ids.

    The manifest, folder and reference-metadata readers all build one of these.
    """

    def __init__(
        self,
        description: str,
        root: str | os.PathLike,
        paths: StringTable,
        captions: StringTable | None,
        ids: StringTable | None = None,
        caption_reader: Callable[[str], Any] | None = None,
        image_reader: Callable[[str], ImageInput] | None = None,
    ) -> None:
        if captions is not None and len(captions) != len(paths):
            raise ValueError("paths and captions differ in length")
        self.description = description
        self.root = Path(root)
        self._root_str = os.fspath(root)
        self.paths = paths
        self.captions = captions
        self.ids = ids
        # For folders: captions are read from a sidecar next to the image when the record is built.
        self._caption_reader = caption_reader
        # For layouts that are not plain files (YFCC15M zips): relative path -> image input.
        self._image_reader = image_reader

    def __len__(self) -> int:
        return len(self.paths)

    def record(self, i: int) -> Record:
        rel = self.paths[i]
        path = os.path.join(self._root_str, rel)  # os.path, not pathlib: this runs once per sample
        image: ImageInput = self._image_reader(rel) if self._image_reader else path
        if self.captions is not None:
            captions: Any = split_captions(self.captions[i])
        else:
            captions = self._caption_reader(path) if self._caption_reader else None
        return Record(id=self.ids[i] if self.ids is not None else rel, image=image, captions=captions)
