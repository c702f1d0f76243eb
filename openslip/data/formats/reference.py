"""The 2021 SLIP reference's metadata formats: YFCC15M, CC3M, CC12M, COCO captions, RedCaps.

Layouts (``root`` is the reference's ``--root``):

- **yfcc15m**: a pickle of ``(index, title, description)`` tuples. Captions are ``[title, description]``;
  the loader picks one per step (empty ones are dropped first, where the reference could pick an empty
  one). Images: ``layout="zip"`` (the reference): ``root/images/II/JJJ.zip`` holding ``KKK.jpg`` for the
  8-digit index ``IIJJJKKK``; ``layout="folder"``: ``root/III/JJJ/<id>.jpg`` with ``III``, ``JJJ`` the first
  six characters of the id (8-digit zero-padded when it is a number). ``"auto"`` picks zip when
  ``root/images`` exists.
- **cc3m / cc12m**: a ``.npy`` object array (the reference) or a pickle of dicts (the file under ``root`` in
  ``image_id`` for cc3m, in ``image_name`` for cc12m, whose records also carry a numeric ``image_id``; plus
  ``captions``) or of ``(filename, caption or captions)`` tuples; or a header-less two-column TSV of file name
  and caption. Images: ``root/<filename>``. A pickle sniffed without a format is cc12m when its first record
  has ``image_name``.
- **coco**: ``captions_<split>.json`` (``images`` + ``annotations``, several captions per image). Images:
  ``root/<split>/<file_name>``; ``root`` defaults to the folder above ``annotations/``.
- **redcaps**: annotation JSON(s) (``{"annotations": [{image_id, subreddit, caption}, ...]}`` or a bare
  list; a folder of them is read in name order). Images: ``root/<subreddit>/<image_id>.jpg``.

Unless stated, ``root`` defaults to the metadata file's folder.

Pickles are data, never code: ``safe_pickle_load`` only rebuilds plain containers, strings, numbers and
numpy arrays, and refuses anything else with a ``DataError`` before it can run.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from openslip.data.formats.decode import DEFAULT_MAX_BYTES, bad_sample
from openslip.data.formats.records import IMAGE_EXTENSIONS, PackedSource, StringTable, join_captions
from openslip.data.skips import BadSample
from openslip.errors import DataError
from openslip.files import METADATA_BYTES, FileError, check_regular, iter_lines, open_regular, read_json

# (module, name) pairs a reference pickle may name: numpy's array/scalar reconstruction and harmless builtins.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 spell bytes
    ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1 reads Python-2 str pickles as text losslessly
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self._source}: refusing to unpickle {module}.{name}; reference metadata may only hold lists, "
            "tuples, dicts, strings, numbers and numpy arrays (a pickle can run code, so nothing else is loaded)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._source}: refusing a pickle with persistent ids")


def safe_pickle_load(path: str | os.PathLike) -> Any:
    """Load a reference ``.pkl`` or ``.npy`` (object arrays included) without executing code."""
    path = Path(path)
    try:
        with open_regular(path, "rb", error=DataError) as f:  # read as a stream: the file is the index
            if path.suffix.lower() == ".npy":
                return _safe_npy_load(f, str(path))
            return _RestrictedUnpickler(f, str(path)).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except (OSError, EOFError, ValueError, pickle.UnpicklingError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"{path}: not a readable pickle / .npy file: {type(err).__name__}: {err}") from None


def _safe_npy_load(f: io.BufferedReader, source: str) -> Any:
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = npy_format.read_array_header_2_0(f)
    if dtype.hasobject:  # np.save pickles object arrays; read that pickle with the restricted unpickler
        return _RestrictedUnpickler(f, source).load()
    f.seek(0)
    return np.load(f, allow_pickle=False)


# ---------------------------------------------------------------------------------------------------------------
# A one-entry cache so that format sniffing and opening read a 15M-entry pickle only once
# ---------------------------------------------------------------------------------------------------------------

_last_loaded: dict[tuple[str, float], Any] = {}


def _load_metadata(path: Path, *, keep: bool = False) -> Any:
    key = (str(path.resolve()), path.stat().st_mtime)
    data = _last_loaded.pop(key, None)
    if data is None:
        data = safe_pickle_load(path)
    _last_loaded.clear()
    if keep:
        _last_loaded[key] = data
    return data


def sniff_reference_pickle(path: Path) -> str:
    """``"yfcc15m"`` for (id, title, description) triples, ``"cc12m"`` for dicts with ``image_name``, else cc3m."""
    data = _load_metadata(path, keep=True)
    first = _first_item(data, path)
    if isinstance(first, (tuple, list, np.ndarray)) and len(first) == 3:
        return "yfcc15m"
    if isinstance(first, dict) and "image_name" in first:
        return "cc12m"
    if isinstance(first, dict) or (isinstance(first, (tuple, list, np.ndarray)) and len(first) == 2):
        return "cc3m"
    raise DataError(f"{path}: cannot tell which reference format this is (first item: {str(first)[:80]})")


def _first_item(data: Any, path: Path) -> Any:
    if isinstance(data, np.ndarray):
        data = data.reshape(-1) if data.dtype.hasobject else data
    try:
        return data[0]
    except (TypeError, IndexError, KeyError):
        raise DataError(f"{path}: expected a non-empty list of samples") from None


# ---------------------------------------------------------------------------------------------------------------
# Openers
# ---------------------------------------------------------------------------------------------------------------


def open_reference(kind: str, metadata: str, *, root: str | os.PathLike | None = None, **options: Any) -> PackedSource:
    """Open reference metadata of ``kind`` (yfcc15m, cc3m, cc12m, coco, redcaps)."""
    path = Path(metadata).expanduser()
    if not path.exists():
        raise DataError(f"no such file or directory: {path}")
    openers: dict[str, Callable[..., PackedSource]] = {
        "yfcc15m": open_yfcc15m,
        "cc3m": functools.partial(open_cc, file_keys=CC3M_FILE_KEYS),
        "cc12m": functools.partial(open_cc, file_keys=CC12M_FILE_KEYS),
        "coco": open_coco,
        "redcaps": open_redcaps,
    }
    return openers[kind](path, root=root, **options)


def _str_id(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return f"{int(value):08d}"
    return str(value)


def open_yfcc15m(path: Path, *, root: str | os.PathLike | None = None, layout: str = "auto") -> PackedSource:
    root_dir = Path(root).expanduser() if root is not None else path.parent
    data = _load_metadata(path)
    ids: list[str] = []
    captions: list[str] = []
    for i, item in enumerate(_iter_items(data, path)):
        if not isinstance(item, (tuple, list, np.ndarray)) or len(item) != 3:
            raise DataError(f"{path}: item {i} is not an (index, title, description) triple: {str(item)[:80]}")
        index, title, desc = item
        ids.append(_str_id(index))
        captions.append(join_captions([title, desc]))
    if layout == "auto":
        layout = "zip" if (root_dir / "images").is_dir() else "folder"
    if layout == "zip":
        reader: Callable[[str], Any] = functools.partial(_yfcc_zip_image, root_dir)
    elif layout == "folder":
        reader = functools.partial(_yfcc_folder_image, root_dir)
    else:
        raise DataError(f"yfcc15m layout must be 'auto', 'zip' or 'folder', not {layout!r}")
    return PackedSource(f"yfcc15m {path}", root_dir, StringTable(ids), StringTable(captions), image_reader=reader)


def _yfcc_folder_image(root: Path, image_id: str) -> Path:
    return root / image_id[:3] / image_id[3:6] / f"{image_id}.jpg"


def _yfcc_zip_image(root: Path, image_id: str) -> Callable[[], bytes]:
    zip_path = root / "images" / image_id[:2] / f"{image_id[2:5]}.zip"
    return functools.partial(read_zip_member, str(zip_path), f"{image_id[5:]}.jpg")


@functools.lru_cache(maxsize=16)
def _open_zip(path: str, pid: int) -> zipfile.ZipFile:
    # Keyed by process id: a handle opened before a loader worker forked must not be shared with it.
    check_regular(path)  # a FIFO or a folder named *.zip is refused unopened (a ZipFile given a path owns its file)
    return zipfile.ZipFile(path)


def read_zip_member(zip_path: str, member: str) -> bytes:
    """The bytes of one member of a zip archive, or ``BadSample``."""
    try:
        archive = _open_zip(zip_path, os.getpid())
    except FileError as err:
        raise bad_sample(err) from None
    except (OSError, zipfile.BadZipFile) as err:
        raise BadSample("unreadable_file", f"{zip_path}: {err}") from None
    try:
        size = archive.getinfo(member).file_size
        if size > DEFAULT_MAX_BYTES:  # judged on the zip's directory, before anything is inflated
            raise BadSample("too_large_file", f"{zip_path}:{member}: {size:,} bytes > max_bytes={DEFAULT_MAX_BYTES:,}")
        return archive.read(member)
    except KeyError:
        raise BadSample("missing_file", f"{zip_path}:{member}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:  # a damaged member
        raise BadSample("truncated", f"{zip_path}:{member}: {err}") from None


# The record key holding the image's path under the root, first found wins. The reference's datasets.py reads
# ``image_id`` for CC3M and ``image_name`` for CC12M, whose records carry both (README: ``{'image_name': '0.jpg',
# 'image_id': 0, 'captions': [...]}``), so the CC12M order must not start with ``image_id``.
CC3M_FILE_KEYS = ("image_id", "image_name", "filename", "image")
CC12M_FILE_KEYS = ("image_name", "image_id", "filename", "image")


def open_cc(
    path: Path, *, root: str | os.PathLike | None = None, file_keys: tuple[str, ...] = CC12M_FILE_KEYS
) -> PackedSource:
    """CC3M / CC12M: reference .npy / .pkl of dicts or (filename, captions) pairs, or a two-column TSV.
    ``file_keys``: the dict keys naming the image file, in order of preference (CC3M_FILE_KEYS for cc3m)."""
    root_dir = Path(root).expanduser() if root is not None else path.parent
    if path.suffix.lower() in (".tsv", ".txt"):
        files, captions = _read_two_column_tsv(path)
    else:
        files, captions = [], []
        for i, item in enumerate(_iter_items(_load_metadata(path), path)):
            if isinstance(item, dict):
                name = next((item[k] for k in file_keys if k in item), None)
                caps = item.get("captions", item.get("caption"))
            elif isinstance(item, (tuple, list, np.ndarray)) and len(item) == 2:
                name, caps = item
            else:
                raise DataError(f"{path}: item {i} is neither a dict nor a (filename, caption) pair: {str(item)[:80]}")
            if name is None:
                raise DataError(f"{path}: item {i} has no image_id / image_name / filename")
            files.append(str(name))
            caps_list = list(caps) if isinstance(caps, (list, tuple, np.ndarray)) else [caps]
            captions.append(join_captions(caps_list))
    return PackedSource(f"cc {path}", root_dir, StringTable(files), StringTable(captions))


def _read_two_column_tsv(path: Path) -> tuple[list[str], list[str]]:
    files: list[str] = []
    captions: list[str] = []
    file_col: int | None = None
    with open_regular(path, "r", error=DataError, encoding="utf-8", errors="surrogateescape") as f:
        for line_no, line in enumerate(iter_lines(f, where=str(path), error=DataError), start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) != 2:
                raise DataError(f"{path}:{line_no}: malformed line: expected 2 tab-separated fields, got {len(cols)}")
            if file_col is None:  # the column that looks like an image file name
                file_col = (
                    1
                    if cols[1].lower().endswith(IMAGE_EXTENSIONS) and not cols[0].lower().endswith(IMAGE_EXTENSIONS)
                    else 0
                )
            files.append(cols[file_col])
            captions.append(join_captions([cols[1 - file_col]]))
    if not files:
        raise DataError(f"{path}: no samples")
    return files, captions


def _iter_items(data: Any, path: Path) -> Iterable[Any]:
    if isinstance(data, np.ndarray):
        return data.reshape(-1) if data.dtype.hasobject else data
    if isinstance(data, (list, tuple)):
        return data
    raise DataError(f"{path}: expected a list of samples, got {type(data).__name__}")


def _load_json(path: Path) -> Any:
    return read_json(path, limit=METADATA_BYTES, error=DataError)


def open_coco(path: Path, *, root: str | os.PathLike | None = None, split: str | None = None) -> PackedSource:
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: not a COCO captions file (no 'annotations' list)")
    if split is None:
        m = re.search(r"captions_(\w+)\.json$", path.name)
        split = m.group(1) if m else "train2017"
    if root is None:
        candidates = [path.parent.parent, path.parent]
        root_dir = next((c for c in candidates if (c / split).is_dir()), path.parent)
    else:
        root_dir = Path(root).expanduser()
    image_dir = root_dir / split if (root_dir / split).is_dir() else root_dir
    file_names: dict[Any, str] = {}
    for i, img in enumerate(data.get("images", [])):
        if not isinstance(img, dict) or "id" not in img:
            raise DataError(f"{path}: images[{i}] has no 'id'")
        file_names[img["id"]] = str(img.get("file_name") or f"{int(img['id']):012d}.jpg")
    by_image: OrderedDict[Any, list[Any]] = OrderedDict()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{path}: annotations[{i}] needs 'image_id' and 'caption'")
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    files, captions, ids = [], [], []
    for image_id, caps in by_image.items():
        files.append(file_names.get(image_id) or f"{int(image_id):012d}.jpg")
        captions.append(join_captions(caps))
        ids.append(str(image_id))
    if not files:
        raise DataError(f"{path}: no annotations")
    return PackedSource(f"coco {path}", image_dir, StringTable(files), StringTable(captions), ids=StringTable(ids))


def open_redcaps(path: Path, *, root: str | os.PathLike | None = None) -> PackedSource:
    sources = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not sources:
        raise DataError(f"{path}: no RedCaps annotation .json files")
    root_dir = Path(root).expanduser() if root is not None else (path if path.is_dir() else path.parent)
    files, captions, ids = [], [], []
    for src in sources:
        data = _load_json(src)
        anns = data.get("annotations") if isinstance(data, dict) else data
        if not isinstance(anns, list):
            raise DataError(f"{src}: not RedCaps annotations (expected a list or {{'annotations': [...]}})")
        for i, ann in enumerate(anns):
            if not isinstance(ann, dict) or not all(k in ann for k in ("image_id", "subreddit", "caption")):
                raise DataError(f"{src}: annotations[{i}] needs 'image_id', 'subreddit' and 'caption'")
            files.append(f"{ann['subreddit']}/{ann['image_id']}.jpg")
            captions.append(join_captions([ann["caption"]]))
            ids.append(str(ann["image_id"]))
    return PackedSource(f"redcaps {path}", root_dir, StringTable(files), StringTable(captions), ids=StringTable(ids))
