"""Labelled image sets for evaluation (docs/DESIGN.md, 'Data formats'): ImageFolder trees and (path, label) CSV files.

Both are map-style sources whose records carry ``label`` (an int index into ``classes``), and both are
``torch`` datasets: ``dataset[i]`` is ``(transform(image), label)``. For an evaluation a bad image is not
silently replaced (that would change the metric); ``__getitem__`` raises ``BadSample``; ``check()`` lists every
unreadable file up front.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from openslip import files
from openslip.data.formats.decode import DEFAULT_DECODE
from openslip.data.formats.records import IMAGE_EXTENSIONS, BaseMapSource, Record, StringTable
from openslip.data.skips import BadSample, SkipCounter
from openslip.errors import DataError

PATH_KEYS = ("image", "filepath", "path", "file", "filename", "image_path")
LABEL_KEYS = ("label", "class", "target", "class_name", "category")


class LabelledSource(BaseMapSource):
    """Images with integer labels; ``classes[label]`` is the class name."""

    def __init__(self, description: str, root: Path, paths: Sequence[str], labels: Sequence[int], classes: list[str]):
        self.description = description
        self.root = root
        self.paths = StringTable(paths)
        self.labels = list(labels)
        self.classes = classes
        self.transform: Callable[[Any], Any] | None = None
        self.decode = DEFAULT_DECODE

    def __len__(self) -> int:
        return len(self.paths)

    def record(self, i: int) -> Record:
        rel = self.paths[i]
        return Record(id=rel, image=self.root / rel, captions=None, label=self.labels[i])

    def with_transform(self, transform: Callable[[Any], Any] | None) -> LabelledSource:
        """Set the transform applied by ``__getitem__`` (e.g. the evaluation resize + centre crop)."""
        self.transform = transform
        return self

    def __getitem__(self, i: int) -> tuple[Any, int]:  # type: ignore[override]
        record = super().__getitem__(i)
        image = record.load_image(self.decode)
        return (self.transform(image) if self.transform is not None else image), int(record.label)

    def check(self) -> tuple[SkipCounter, list[tuple[str, str]]]:
        """Decode every image; returns the counts and the (path, reason) of each unreadable one."""
        counter, bad = SkipCounter(), []
        for i in range(len(self)):
            counter.add_seen()
            try:
                self.record(i).load_image(self.decode, counter=counter)
            except BadSample as err:
                counter.skip(err.reason)
                bad.append((self.paths[i], err.reason))
        return counter, bad


def image_folder(root: str | os.PathLike, *, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> LabelledSource:
    """``root/<class>/**/<image>``: one class per sub-folder, classes in sorted name order (as torchvision)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    exts = tuple(e.lower() for e in extensions)
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(exts) and not f.startswith("."):
                    paths.append(os.path.relpath(os.path.join(dirpath, f), root))
                    labels.append(label)
    if not paths:
        raise DataError(f"{root}: no images in the class folders")
    return LabelledSource(str(root), root, paths, labels, classes)


def label_csv(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
    classes: Sequence[str] | None = None,
) -> LabelledSource:
    """A CSV (or TSV) with a header and ``path,label`` columns; paths relative to the file (or ``root``).

    Labels are integers or class names. Integer labels name ``classes[label]`` (default: the numbers as
    text); names are mapped through ``classes`` when given, else the sorted set of names found.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"no such file: {path}")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with files.open_regular(path, "r", error=DataError, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(files.iter_lines(f, where=str(path), error=DataError), delimiter=delimiter))
    rows = [(i, r) for i, r in enumerate(rows, start=1) if r and r != [""]]
    if not rows:
        raise DataError(f"{path}: empty file")
    header = [h.strip() for h in rows[0][1]]
    img_col = _column(header, image_key, PATH_KEYS, "image", path)
    lab_col = _column(header, label_key, LABEL_KEYS, "label", path)
    paths: list[str] = []
    raw_labels: list[str] = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: malformed row: {len(row)} fields, the header has {len(header)}")
        paths.append(row[img_col])
        raw_labels.append(row[lab_col].strip())
    if not paths:
        raise DataError(f"{path}: no rows")
    labels, names = index_labels(raw_labels, classes, str(path))
    base = Path(root).expanduser() if root is not None else path.parent
    return LabelledSource(str(path), base, paths, labels, names)


def index_labels(raw: Sequence[str], classes: Sequence[str] | None, where: str) -> tuple[list[int], list[str]]:
    """(label indices, class names) from raw label texts: integers index ``classes`` (default: the numbers as
    text); names are looked up in ``classes`` when given, else in the sorted set of names found."""
    if all(lab.lstrip("-").isdigit() for lab in raw):
        labels = [int(lab) for lab in raw]
        names = list(classes) if classes is not None else [str(i) for i in range(max(labels) + 1)]
        bad = [lab for lab in labels if not 0 <= lab < len(names)]
        if bad:
            raise DataError(f"{where}: label {bad[0]} is outside 0..{len(names) - 1}")
        return labels, names
    names = list(classes) if classes is not None else sorted(set(raw))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted({lab for lab in raw if lab not in lookup})
    if unknown:
        raise DataError(f"{where}: labels not in the class list: {', '.join(unknown[:5])}")
    return [lookup[lab] for lab in raw], names


def _column(header: list[str], wanted: str | None, defaults: Sequence[str], what: str, path: Path) -> int:
    if wanted is not None:
        if wanted not in header:
            raise DataError(f"{path}:1: no {what} column {wanted!r}; columns are: {', '.join(header)}")
        return header.index(wanted)
    for key in defaults:
        if key in header:
            return header.index(key)
    raise DataError(f"{path}:1: no {what} column; expected one of {', '.join(defaults)}; columns: {', '.join(header)}")
