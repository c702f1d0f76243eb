"""Files written whole or not at all: a temporary file in the same folder, then a rename.

A reader (or a rerun after a kill) sees either the old file or the complete new one, never a torn write. A set of
files (an export, a converted checkpoint) is written in a staging folder inside its target and then moved in file
by file: the target folder itself, and whatever else it holds, is never removed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from openslip.outputs import STAGING_PREFIX
from openslip.weights.safe_load import fsync_dir


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes(path, buf.getvalue())


@contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A new hidden folder inside `target` (created when missing) to write files in before `move_files_into`
    publishes them. Afterwards the staging folder is removed with whatever is left in it, and so are staging
    folders a killed writer left; nothing else in `target` is. A `target` this call created is removed again
    (when still empty) if the writing fails."""
    out = Path(target).expanduser()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            try:
                out.rmdir()  # only when empty: never anything but the folder made above
            except OSError:
                pass
        raise
    shutil.rmtree(staging, ignore_errors=True)


def move_files_into(staged: str | os.PathLike, target: str | os.PathLike, *, last: str | None = None) -> list[str]:
    """Move each file of `staged` into `target` with one rename (same file system), fsync'd first: a file of the
    same name is replaced whole, and nothing else in `target` is touched. `last` (checksums.json) is moved last,
    so that a kill in between leaves checksums that no longer match: a loud error, never a silent mix. Returns
    the names moved."""
    src, out = Path(staged), Path(target)
    names = sorted((p.name for p in src.iterdir() if p.is_file() and not p.is_symlink()), key=lambda n: (n == last, n))
    for name in names:
        with open(src / name, "rb") as f:
            os.fsync(f.fileno())
        os.replace(src / name, out / name)
    fsync_dir(out)
    return names
