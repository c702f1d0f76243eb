"""Files written whole or not at all: a temporary file in the same folder, then a rename.

A reader (or a rerun after a kill) sees either the old file or the complete new one, never a torn write. Every
writer of a single file goes through `atomic_path` (`atomic_file`, `write_bytes` on top of it): the temporary file is
fsync'd before the rename and the folder after it, so that a power cut cannot publish a name whose data never reached
the disk, and a failed write (a full disk, a file-size limit, an exception of the writer) removes it and leaves the
old file as it was. A set of files (an export, a converted checkpoint) is written in a staging folder inside its
target and then moved in file by file: the target folder itself, and whatever else it holds, is never removed.

This module imports nothing of openslip but the core (`outputs.STAGING_PREFIX`), so that every layer (data/
included) may write through it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from openslip.outputs import STAGING_PREFIX

# The temporary file beside `NAME` is `.NAME.tmp<pid>`: hidden, and on the same file system as NAME (the rename is
# atomic only there). The pid keeps two processes writing the same file (a feature cache shared by runs) out of
# each other's temporary file; the last rename wins, with a complete file either way.
TEMP_INFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a closed file's data to the disk (fsync works on any descriptor of the file)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_INFIX}{os.getpid()}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that opens the file by name itself (safetensors, torch.save):
    once the block ends without an exception, the file written there is fsync'd and renamed to `path`; on any
    exception it is removed and `path` is left as it was. The folder of `path` is created when missing."""
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)


@contextmanager
def atomic_file(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None, errors: str | None = None
) -> Iterator[IO[Any]]:
    """`open(path, mode)` for a writer that streams (a shard, a rewritten log): the yielded file is a temporary
    one, published under `path` as `atomic_path` does when the block ends; a failure (the final flush included)
    leaves no temporary file and the old `path` intact."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding, errors=errors) as f:
        yield f


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data)
    return Path(path).expanduser()


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
        fsync_file(src / name)
        os.replace(src / name, out / name)
    fsync_dir(out)
    return names
