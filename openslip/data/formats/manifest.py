"""Manifests (CSV / TSV / JSONL / JSON array) and folders of images with sidecar ``.txt`` captions.

Manifest rules:

- The first row of a CSV/TSV is the header. TSV is split on tabs with no quoting (captions often hold
  quote characters); CSV follows RFC 4180 quoting.
- Image paths are relative to the manifest's folder unless ``root=`` is given; absolute paths are kept.
- Columns: the image column is the first of ``IMAGE_KEYS`` present (or ``image_key=``); the caption
  columns are ``caption_keys=`` (several allowed, e.g. ``caption_keys=("title", "description")``) or
  the first of ``CAPTION_KEYS`` present. In JSONL a caption value may be a list of captions. Every
  caption of a sample is kept; the loader picks one per step.
- A missing column, a row with the wrong number of fields, or a line that is not a JSON object raises
  ``DataError`` naming the file and line. Empty or undecodable captions are *not* errors: the sample is
  skipped and counted when it is loaded (docs/DESIGN.md, 'Bad input').
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from openslip import files
from openslip.data.formats.decode import read_bytes
from openslip.data.formats.records import (
    IMAGE_EXTENSIONS,
    PackedSource,
    StringTable,
    StringTableBuilder,
    join_captions,
)
from openslip.data.skips import BadSample
from openslip.errors import DataError

IMAGE_KEYS = ("image", "filepath", "image_path", "img_path", "file", "filename", "file_name", "path", "img")
CAPTION_KEYS = ("caption", "captions", "text", "title")


def _pick_key(available: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str, where: str) -> str:
    if wanted is not None:
        if wanted not in available:
            raise DataError(f"{where}: no {what} column {wanted!r}; columns are: {', '.join(available)}")
        return wanted
    for key in defaults:
        if key in available:
            return key
    option = "caption_keys" if what == "caption" else f"{what}_key"
    raise DataError(
        f"{where}: no {what} column; expected one of {', '.join(defaults)} (or name it after the path: "
        f"data.train=FILE?{option}=COLUMN), "
        f"columns are: {', '.join(available) or '(none)'}"
    )


def _caption_keys(available: Sequence[str], wanted: str | Sequence[str] | None, where: str) -> list[str]:
    if wanted is None:
        return [_pick_key(available, None, CAPTION_KEYS, "caption", where)]
    keys = [k.strip() for k in wanted.split(",")] if isinstance(wanted, str) else list(wanted)
    return [_pick_key(available, k, CAPTION_KEYS, "caption", where) for k in keys]


class ManifestSource(PackedSource):
    """A CSV, TSV, JSONL or JSON-array manifest of (image path, caption(s)) rows."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_key: str | None = None,
        caption_keys: str | Sequence[str] | None = None,
        root: str | os.PathLike | None = None,
        id_key: str | None = None,
    ) -> None:
        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(f"no such manifest file: {path}")
        files.check_regular(path, error=DataError)  # a FIFO or a device is refused here, never opened
        suffix = path.suffix.lower()
        image_col: str | None = None
        caption_cols: list[str] = []
        if suffix in (".csv", ".tsv"):
            header_line, header, rows = _read_table(path, "\t" if suffix == ".tsv" else ",")
            image_col = _pick_key(header, image_key, IMAGE_KEYS, "image", f"{path}:{header_line}")
            caption_cols = _caption_keys(header, caption_keys, f"{path}:{header_line}")
        elif suffix in (".jsonl", ".json"):
            rows = _read_jsonl(path) if suffix == ".jsonl" else _read_json_array(path)
        else:
            raise DataError(f"{path}: unknown manifest type {suffix!r}; use .csv, .tsv, .jsonl or .json")

        # packed as read: a manifest of millions of rows costs its text once, not as Python strings as well
        paths, captions, ids = StringTableBuilder(), StringTableBuilder(), StringTableBuilder()
        try:
            for line, row in rows:
                where = f"{path}:{line}"
                if image_col is None:  # JSON: decide the columns from the first row
                    image_col = _pick_key(list(row), image_key, IMAGE_KEYS, "image", where)
                    caption_cols = _caption_keys(list(row), caption_keys, where)
                missing = [k for k in (image_col, *caption_cols) if k not in row]
                if missing:
                    raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
                image = row[image_col]
                if not isinstance(image, str) or not image.strip():
                    raise DataError(f"{where}: empty or non-text image path in column {image_col!r}")
                if image.startswith(("http://", "https://", "s3://", "gs://")):
                    raise DataError(
                        f"{where}: image paths must be local files, got a URL ({image[:60]}); download first"
                    )
                caps: list[Any] = []
                for col in caption_cols:
                    value = row[col]
                    if isinstance(value, list):
                        if not all(v is None or isinstance(v, (str, int, float)) for v in value):
                            raise DataError(f"{where}: column {col!r} must hold text or a list of texts")
                        caps.extend(value)
                    elif value is None or isinstance(value, (str, int, float)):
                        caps.append(value)
                    else:
                        raise DataError(f"{where}: column {col!r} must hold text or a list of texts")
                paths.append(image)
                captions.append(join_captions(caps))
                if id_key is not None:
                    if id_key not in row:
                        raise DataError(f"{where}: missing id column {id_key!r}")
                    ids.append(str(row[id_key]))
        except MemoryError:
            raise DataError(
                f"{path}: the manifest's index does not fit in memory after {len(paths):,} rows; split it, or write "
                "it as shards with `openslip data make-shards`, which are streamed"
            ) from None
        if not len(paths):
            raise DataError(f"{path}: the manifest has no samples")
        super().__init__(
            description=str(path),
            root=Path(root).expanduser().absolute() if root is not None else path.absolute().parent,
            paths=paths.build(),
            captions=captions.build(),
            ids=ids.build() if id_key is not None else None,
        )
        self.path = path
        self.image_key = image_col
        self.caption_keys = caption_cols


def _read_table(path: Path, delimiter: str) -> tuple[int, list[str], Iterator[tuple[int, dict[str, str]]]]:
    """(header line number, header, iterator of (line number, row dict)); non-UTF-8 bytes survive as surrogate
    escapes so that the caption check can report them. The file is streamed line by line, each line bounded."""
    f = files.open_regular(path, "r", error=DataError, encoding="utf-8-sig", errors="surrogateescape", newline="")
    lines = files.iter_lines(f, where=str(path), error=DataError)
    if delimiter == "\t":
        numbered: Iterator[tuple[int, list[str]]] = (
            (i, line.rstrip("\r\n").split("\t")) for i, line in enumerate(lines, start=1)
        )
    else:
        numbered = _csv_rows(csv.reader(lines, delimiter=delimiter, strict=True), path)
    numbered = ((line, fields) for line, fields in numbered if fields and fields != [""])  # blank lines
    try:
        first = next(numbered, None)
    except BaseException:
        f.close()
        raise
    if first is None:
        f.close()
        raise DataError(f"{path}: the manifest is empty (no header row)")
    header_line, header = first[0], [h.strip() for h in first[1]]
    if len(set(header)) != len(header):
        f.close()
        raise DataError(f"{path}:{header_line}: duplicate column names in the header: {', '.join(header)}")

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        with f:
            for line, fields in numbered:
                if len(fields) != len(header):
                    raise DataError(
                        f"{path}:{line}: malformed row: {len(fields)} fields, the header has {len(header)} "
                        f"({', '.join(header)})"
                    )
                yield line, dict(zip(header, fields, strict=True))

    return header_line, header, rows()


# Python's csv module refuses fields over 131,072 characters by default, which made one long caption fail the
# whole manifest. The limit is raised while a manifest is parsed (and restored: it is process-wide) to a size no
# caption reaches but that still stops a stray quote from swallowing a huge file into one field.
CSV_FIELD_LIMIT = 16 * 1024 * 1024


def _csv_rows(reader: Any, path: Path) -> Iterator[tuple[int, list[str]]]:
    while True:
        start = reader.line_num + 1
        previous = csv.field_size_limit(CSV_FIELD_LIMIT)
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{path}:{start}: malformed CSV: {err}") from None
        finally:
            csv.field_size_limit(previous)
        yield start, fields


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with files.open_regular(path, "r", error=DataError, encoding="utf-8-sig", errors="surrogateescape") as f:
        for line_no, line in enumerate(files.iter_lines(f, where=str(path), error=DataError), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DataError(f"{path}:{line_no}: malformed JSON line: {err}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def _read_json_array(path: Path) -> Iterator[tuple[int | str, dict[str, Any]]]:
    """The rows of a JSON-array manifest, parsed one item at a time (the array is never held whole)."""
    with files.open_regular(path, "r", error=DataError, encoding="utf-8-sig") as f:
        for i, row in enumerate(files.iter_json_array(f, where=str(path), error=DataError)):
            if not isinstance(row, dict):
                raise DataError(f"{path}: item {i} is not a JSON object")
            yield f"item {i}", row  # no line numbers in a JSON array: the item index stands in


# ---------------------------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------------------------


def read_sidecar_captions(image_path: str) -> list[bytes] | None:
    """Captions from ``<image stem>.txt`` next to the image: one caption per non-empty line (raw bytes).

    Returns None when there is no sidecar (the loader counts it as ``missing_caption``).
    """
    stem, _ = os.path.splitext(image_path)
    try:
        data = read_bytes(stem + ".txt", max_bytes=files.CAPTION_BYTES)
    except BadSample as bad:
        if bad.reason == "missing_file":
            return None
        raise
    lines = [line for line in data.splitlines() if line.strip()]
    return lines or [b""]


class FolderSource(PackedSource):
    """Every image under ``root`` (recursively, sorted), its caption(s) in a sidecar ``.txt`` of the same stem."""

    def __init__(self, root: str | os.PathLike, *, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        root = Path(root).expanduser().absolute()
        if not root.is_dir():
            raise DataError(f"no such folder: {root}")
        exts = tuple(e.lower() for e in extensions)
        rel: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(exts) and not name.startswith("."):
                    rel.append(os.path.relpath(os.path.join(dirpath, name), root))
        if not rel:
            raise DataError(f"{root}: no images ({', '.join(exts)}) found")
        super().__init__(
            description=str(root),
            root=root,
            paths=StringTable(rel),
            captions=None,
            caption_reader=read_sidecar_captions,
        )
