"""Reading checkpoint files as data only: format sniffing, safetensors headers, allow-listed `torch.load`,
config.json documents and the original SLIP checkpoint layout (turned into a plain state dict + args).

Nothing here unpickles arbitrary objects: `torch.load` always runs with `weights_only=True`, and any
extra class a file may reference (the SLIP reference pickles an `argparse.Namespace`) is allowed only
for the duration of one call via `torch.serialization.safe_globals`
(docs/DESIGN.md, 'Checkpoints are data'). Every failure becomes a `CheckpointError` naming the file and the reason.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from openslip.errors import CheckpointError
from openslip.files import DOCUMENT_BYTES, open_regular, read_text

# The safetensors metadata key holding the config.json document, so a lone .safetensors file is self-describing.
CONFIG_METADATA_KEY = "openslip_config"
# A safetensors header larger than this is not a model header but garbage (the format's own limit is 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000

# First bytes of formats people point a loader at by mistake -> a readable name.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF (WebP/WAV/AVI) file"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ", "an xz archive"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF", "an HDF5 file (a Keras/TensorFlow checkpoint?)"),
)


def describe_file(path: Path) -> str:
    """What a file looks like from its first bytes: "torch-zip", "pickle", "safetensors", or a description
    of something that is not a checkpoint (raises `CheckpointError` for unreadable / empty files)."""
    try:
        size = path.stat().st_size
        with open_regular(path, "rb", error=CheckpointError) as f:  # a FIFO or a device: one line, never opened
            head = f.read(64)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # a legacy (pre-1.6) torch file or a plain pickle
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        return "safetensors"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut at the end of `head` is still text
        text = head[: err.start].decode("utf-8") if err.start >= len(head) - 3 else "\0"
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return f"an unrecognised binary file (first bytes {head[:8].hex(' ')})"


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The parsed JSON header of a safetensors file, after checking it is complete: every tensor's byte
    range must lie inside the file and the data section must end exactly at the end of the file."""
    try:
        size = path.stat().st_size
        with open_regular(path, "rb", error=CheckpointError) as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: bad safetensors header (claims {n} header bytes in a {size}-byte file)")
            raw = f.read(n)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # RecursionError: absurd nesting
        raise CheckpointError(f"{path}: bad safetensors header (not JSON: {err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: bad safetensors header (not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: bad safetensors header (entry {name!r} has no valid data_offsets)")
        end = max(end, offsets[1])
    data = size - 8 - n
    if end != data:
        what = "truncated" if end > data else "has trailing bytes"
        raise CheckpointError(f"{path}: the safetensors file is {what} ({data} data bytes, header expects {end})")
    return header


def load_safetensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, checked with `read_safetensors_header` first."""
    from safetensors import safe_open

    header = read_safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    try:
        with safe_open(str(path), framework="pt", device=str(torch.device(device))) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError ...
        raise CheckpointError(f"{path}: cannot read safetensors data: {err}") from None
    return tensors, dict(metadata)


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def torch_load_data(path: Path, map_location: str | torch.device = "cpu", allow: Iterable[type] = ()) -> Any:
    """`torch.load(weights_only=True)` with `allow` added to the allow-list for this call only.

    A pickle that would import anything else (`os.system`, `builtins.eval`, a class of some
    training script) is refused before any of it runs; so are truncated and non-torch files.
    """
    kind = describe_file(path)
    if kind not in ("torch-zip", "pickle"):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (it looks like {kind})")
    if kind == "torch-zip" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: the checkpoint is truncated or corrupt (its zip directory is missing)")
    try:
        with torch.serialization.safe_globals(list(allow)), warnings.catch_warnings():
            # Legacy files written with pickle protocol > 2 trigger a harmless notice from torch.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, OSError, KeyError, zip errors ...
        raise CheckpointError(f"{path}: {_explain_load_error(err)}") from None


def _explain_load_error(err: Exception) -> str:
    msg = str(err)
    if "Weights only load failed" in msg or type(err).__name__ == "UnpicklingError":
        found = _GLOBAL_RE.search(msg)
        if found:
            return (
                f"refused: the file would import `{found.group(1)}`, which is not plain checkpoint data "
                "(openslip loads checkpoints with weights_only=True and never runs code from them)"
            )
        last = [line.strip() for line in msg.splitlines() if line.strip()]
        detail = next((line for line in reversed(last) if not line.startswith("Check the documentation")), "")
        return f"refused: not plain checkpoint data ({detail[:200]})"
    if isinstance(err, EOFError) or "EOF" in msg:
        return "the checkpoint is truncated (unexpected end of file)"
    first = msg.strip().splitlines()[0] if msg.strip() else type(err).__name__
    return f"the checkpoint is truncated or corrupt ({type(err).__name__}: {first[:200]})"


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path, limit=DOCUMENT_BYTES, error=CheckpointError))
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # RecursionError: absurd nesting
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def read_config_document(path: Path) -> dict[str, Any]:
    """An openslip config.json (a JSON object with a "model" entry)."""
    doc = read_json(path)
    if not isinstance(doc, dict) or "model" not in doc:
        raise CheckpointError(f"{path}: not an openslip checkpoint config (no 'model' entry)")
    return doc


def key_summary(keys: list[str], n: int = 5) -> str:
    """The first `n` keys and how many there are, for error messages."""
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def strip_wrapper_prefixes(sd: dict[str, Any]) -> dict[str, Any]:
    """Drop the `module.` of DistributedDataParallel (the reference saves its DDP model) and `_orig_mod.`
    of torch.compile."""
    out = {}
    for key, value in sd.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def jsonable(v: Any) -> Any:
    """`v` with anything JSON cannot hold replaced by its repr (for provenance records)."""
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, (list, tuple, set)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return repr(v)


def read_torch_checkpoint(
    path: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict without wrapper prefixes, the run's args, provenance) of an original SLIP checkpoint
    (`{'epoch', 'state_dict', 'optimizer', 'scaler', 'best_acc1', 'args': Namespace}`) or a bare state dict."""
    # argparse.Namespace is what the reference pickles as `args`; it is allowed for this one load only.
    obj = torch_load_data(path, map_location, allow=[argparse.Namespace])
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint or state dict")
    args: dict[str, Any] = {}
    if isinstance(obj.get("state_dict"), dict) or isinstance(obj.get("model"), dict):
        sd = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj["model"]
        raw = obj.get("args")
        args = vars(raw) if isinstance(raw, argparse.Namespace) else dict(raw) if isinstance(raw, dict) else {}
        info = {"format": "slip-reference", "epoch": obj.get("epoch"), "best_acc1": obj.get("best_acc1")}
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, info = obj, {"format": "state-dict"}
    else:
        keys = key_summary([str(k) for k in obj])
        raise CheckpointError(f"{path}: neither a SLIP checkpoint (no 'state_dict') nor a state dict: {keys}")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the state dict holds non-tensor entries: {key_summary(bad)}")
    if args:
        info["args"] = jsonable(args)
    return strip_wrapper_prefixes(sd), args, {k: jsonable(v) for k, v in info.items() if v is not None}


def config_from_metadata(meta: dict[str, str], path: Path) -> dict[str, Any]:
    """The config.json document an openslip .safetensors file carries in its header metadata."""
    try:
        doc = json.loads(meta[CONFIG_METADATA_KEY])
    except (KeyError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: the safetensors file carries no readable openslip config") from None
    if not isinstance(doc, dict) or "model" not in doc:
        raise CheckpointError(f"{path}: the safetensors file's openslip config has no 'model' entry")
    return doc


# Exact types `torch.load(weights_only=True)` accepts without an allow-list (subclasses such as numpy
# scalars or defaultdict would need one, so they are rejected at save time rather than at resume time).
_PLAIN_SCALARS = (int, float, complex, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple, set)


def check_plain_data(obj: Any, where: str = "train_state") -> None:
    """Raise `TypeError` naming the first value that `torch.load(weights_only=True)` would refuse."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN_SCALARS:
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            check_plain_data(k, f"{where} key")
            check_plain_data(v, f"{where}[{k!r}]")
        return
    if type(obj) in _PLAIN_CONTAINERS:
        for i, v in enumerate(obj):
            check_plain_data(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only tensors and plain "
        "python values (convert numpy arrays with torch.from_numpy, numpy scalars with .item())"
    )
