"""One way to open a file the user names: a regular file, checked before it is opened, read with a bound.

Every file openslip reads (manifests, configs, shard indexes and shards, weights, captions, class lists, run logs)
is opened here. ``os.stat`` must say it is a regular file: a FIFO would block the open (or the first read) until a
writer comes, which may be never; a device such as ``/dev/zero`` never ends; a folder cannot be read. Each is
refused in one line naming the path and what it is (``FileError``, or the caller's own ``UserError`` kind); readers
of single samples turn the refusal into a counted skip (``FileError.reason``). The open itself is non-blocking and
checked again with ``fstat``, so a FIFO swapped in between the ``stat`` and the ``open`` cannot block it either.

Reads are bounded by the kind of file (``DOCUMENT_BYTES``, ``CONFIG_BYTES`` ...): a file over its bound is refused
on its size before a byte is read, and the read itself stops one byte past the bound, should the file grow. Long
text files (manifests, ``metrics.jsonl``) are streamed line by line with a bound on the line (``iter_lines``) and
JSON arrays item by item (``iter_json_array``), so memory does not grow with the file. Weights are read by
safetensors / torch from their path once ``check_regular`` passed.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from typing import IO, Any

from openslip.errors import UserError

MiB = 1024 * 1024
# YAML configs (`--config`, a run's config.yaml): a few KB; PyYAML needs ~100x a document's size in memory.
CONFIG_BYTES = 1 * MiB
# JSON documents read whole: index.json, checksums.json, config.json, class-name / prompt files.
DOCUMENT_BYTES = 64 * MiB
# A sidecar caption file: a few captions of a few hundred characters.
CAPTION_BYTES = 1 * MiB
# A one-line pointer file such as a run's checkpoints/latest.
POINTER_BYTES = 4096
# A dataset's metadata that a format can only parse whole (COCO captions ~90 MB, Karpathy splits, RedCaps).
METADATA_BYTES = 1024 * MiB
# One line of a streamed text file (a manifest row, a metrics.jsonl record), and one item of a streamed JSON array.
LINE_CHARS = 16 * MiB

# `FileError.reason`: why a path was refused.
REASONS = ("missing", "folder", "not_a_file", "unreadable", "too_large")


class FileError(UserError):
    """A path that is not a readable regular file, or a file over its read bound; ``reason`` is one of
    ``REASONS`` (readers of single samples turn it into a skip reason)."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


def kind_of(mode: int) -> str:
    """What a non-regular file is, for a message: "a folder", "a FIFO", "a socket", "a character device" ..."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a file"


def _refuse(error: type[UserError], reason: str, message: str) -> UserError:
    return error(message, reason) if issubclass(error, FileError) else error(message)  # type: ignore[call-arg]


def _check_mode(path: str | os.PathLike, st: os.stat_result, error: type[UserError]) -> None:
    if not stat.S_ISREG(st.st_mode):
        reason = "folder" if stat.S_ISDIR(st.st_mode) else "not_a_file"
        raise _refuse(error, reason, f"{os.fspath(path)}: {kind_of(st.st_mode)}, not a regular file")


def check_regular(path: str | os.PathLike, *, error: type[UserError] = FileError) -> os.stat_result:
    """``os.stat`` of ``path`` (symbolic links followed) when it is a regular file; else raise ``error`` naming
    the path and what it is (missing, a folder, a FIFO, a socket, a device), nothing opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _refuse(error, "missing", f"{os.fspath(path)}: no such file") from None
    except OSError as err:  # permissions on a parent folder, a name too long, an I/O error
        raise _refuse(error, "unreadable", f"{os.fspath(path)}: cannot read: {err.strerror or err}") from None
    _check_mode(path, st, error)
    return st


def is_regular(path: str | os.PathLike) -> bool:
    """True for an existing regular file (``os.path.isfile`` says the same; the name says why it is asked)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(
    path: str | os.PathLike,
    mode: str = "rb",
    *,
    error: type[UserError] = FileError,
    limit: int | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> IO[Any]:
    """Open a regular file for reading (``mode`` "rb" or "r"), refusing anything else as ``check_regular`` does
    and a file of more than ``limit`` bytes (when given) on its size.

    The file is opened with ``O_NONBLOCK`` and checked again with ``fstat`` (a FIFO put in its place after the
    ``stat`` cannot block the open), then switched back to blocking reads. The file object is returned open: use it
    in a ``with`` block."""
    if mode not in ("rb", "r"):
        raise ValueError(f"open_regular reads only (mode 'rb' or 'r'), got {mode!r}")
    st = check_regular(path, error=error)
    if limit is not None and st.st_size > limit:
        raise _refuse(error, "too_large", f"{os.fspath(path)}: {st.st_size:,} bytes, more than the {limit:,} allowed")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _refuse(error, "missing", f"{os.fspath(path)}: no such file") from None
    except OSError as err:
        raise _refuse(error, "unreadable", f"{os.fspath(path)}: cannot read: {err.strerror or err}") from None
    try:
        _check_mode(path, os.fstat(fd), error)
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, encoding=encoding, errors=errors, newline=newline)
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, *, limit: int, error: type[UserError] = FileError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked on its size, and on the read)."""
    try:
        with open_regular(path, "rb", error=error, limit=limit) as f:
            data = f.read(limit + 1)  # bounded even if the file grew since the stat
    except OSError as err:  # an I/O error while reading
        raise _refuse(error, "unreadable", f"{os.fspath(path)}: cannot read: {err.strerror or err}") from None
    if len(data) > limit:
        raise _refuse(error, "too_large", f"{os.fspath(path)}: more than the {limit:,} bytes allowed")
    return data


def read_text(
    path: str | os.PathLike, *, limit: int, error: type[UserError] = FileError, encoding: str = "utf-8"
) -> str:
    """``read_bytes`` decoded; bytes that are not ``encoding`` raise ``error`` naming the file."""
    data = read_bytes(path, limit=limit, error=error)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise _refuse(error, "unreadable", f"{os.fspath(path)}: not {encoding} text ({err})") from None


def read_json(path: str | os.PathLike, *, limit: int = DOCUMENT_BYTES, error: type[UserError] = FileError) -> Any:
    """A JSON document of at most ``limit`` bytes; invalid JSON raises ``error`` naming the file."""
    text = read_text(path, limit=limit, error=error)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: absurd nesting
        raise _refuse(error, "unreadable", f"{os.fspath(path)}: not valid JSON: {' '.join(str(err).split())}") from None


def iter_lines(
    f: IO[str], *, where: str, error: type[UserError] = FileError, max_chars: int = LINE_CHARS
) -> Iterator[str]:
    """The lines of an open text file, newline included, each of at most ``max_chars`` characters: a longer
    one (a binary file, a file without newlines) raises ``error`` at ``where:LINE`` instead of being read whole."""
    line_no = 0
    while True:
        try:
            line = f.readline(max_chars + 1)
        except UnicodeDecodeError as err:
            raise _refuse(error, "unreadable", f"{where}:{line_no + 1}: not valid text ({err})") from None
        if not line:
            return
        line_no += 1
        if len(line) > max_chars:
            raise _refuse(error, "too_large", f"{where}:{line_no}: a line longer than {max_chars:,} characters")
        yield line


def iter_json_array(
    f: IO[str], *, where: str, error: type[UserError] = FileError, max_chars: int = LINE_CHARS
) -> Iterator[Any]:
    """The items of a JSON array read from an open text file one by one, each of at most ``max_chars``
    characters, so that a large array is never held whole (in memory only its current item)."""
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False

    def fill() -> None:  # append at least as much as is buffered: parsing an item restarts, so grow geometrically
        nonlocal buf, pos, eof
        try:
            data = f.read(max(1 << 16, len(buf) - pos))
        except UnicodeDecodeError as err:
            raise _refuse(error, "unreadable", f"{where}: not valid text ({err})") from None
        eof = not data
        buf, pos = buf[pos:] + data, 0

    def skip_space() -> str:  # the next non-space character ("" at the end)
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or eof:
                return buf[pos] if pos < len(buf) else ""
            fill()

    if skip_space() != "[":
        raise _refuse(error, "unreadable", f"{where}: not a JSON array")
    pos += 1
    if skip_space() == "]":
        return
    index = 0
    while True:
        while True:
            try:
                item, end = decoder.raw_decode(buf, pos)
            except (ValueError, RecursionError) as err:
                if eof or len(buf) - pos > max_chars:
                    problem = f"longer than {max_chars:,} characters" if not eof else " ".join(str(err).split())
                    raise _refuse(error, "unreadable", f"{where}: item {index}: not valid JSON ({problem})") from None
                fill()
                continue
            if end == len(buf) and not eof:  # a number may go on in the next chunk
                fill()
                continue
            break
        if end - pos > max_chars:
            raise _refuse(error, "too_large", f"{where}: item {index} is longer than {max_chars:,} characters")
        pos = end
        yield item
        index += 1
        separator = skip_space()
        pos += 1
        if separator == "]":
            if skip_space():
                raise _refuse(error, "unreadable", f"{where}: text after the end of the JSON array")
            return
        if separator != ",":
            problem = "the array ends without its closing ']'" if not separator else f"{separator!r} after an item"
            raise _refuse(error, "unreadable", f"{where}: item {index - 1}: {problem}, expected ',' or ']'")
        skip_space()


def read_lines(
    path: str | os.PathLike,
    *,
    error: type[UserError] = FileError,
    max_chars: int = LINE_CHARS,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Iterator[str]:
    """The lines of a regular text file, streamed (``iter_lines``): the file is opened on the first ``next``."""
    with open_regular(path, "r", error=error, encoding=encoding, errors=errors) as f:
        yield from iter_lines(f, where=os.fspath(path), error=error, max_chars=max_chars)
