"""Open any labelled image set by its spec: a folder of class folders, a .csv / .tsv of (path, label), or
labelled shards. The readers live in ``labelled.py`` and ``labelled_shards.py``; this picks between them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from openslip.data.formats.labelled import LabelledSource, image_folder, label_csv
from openslip.data.formats.labelled_shards import is_shard_set, labelled_shards
from openslip.errors import DataError


def open_labelled(spec: str | os.PathLike, **options: Any) -> LabelledSource:
    """A folder of class sub-folders, a ``.csv`` / ``.tsv`` of (path, label), or labelled shards
    (``openslip.data.formats.labelled_shards``; ``classes=`` fixes the class order of their indices)."""
    if is_shard_set(spec):
        return labelled_shards(spec, **options)
    p = Path(spec).expanduser()
    if p.is_dir():
        return image_folder(p, **options)
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
        return label_csv(p, **options)
    if not p.exists():
        raise DataError(f"no such file or directory: {spec}")
    raise DataError(f"{spec}: a labelled set is a folder of class folders, a .csv/.tsv of path,label, or .tar shards")
