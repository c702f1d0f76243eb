"""Checkpoints: the openslip directory format, atomic saves, run directories, and original SLIP `.pt` import.

An openslip checkpoint is a directory (docs/DESIGN.md, 'Run directory')::

    step_0000500/
      model.safetensors   weights; keys are `model.state_dict()` keys (the SLIP reference's names)
      config.json         {"model": ModelConfig.to_dict(), "openslip_version": ..., "train_config": ..., "step": ...}
      train_state.pt      optional: optimizer / scaler / schedule / RNG / loader state, plain data only

A run keeps them in `OUT_DIR/checkpoints/`, where the text file `latest` names the newest complete one and, when
`eval.best_metric` is set, `best` the one that scored best (with `best.json` saying what and when;
`openslip.train.best`).
Either pointer file, given as a path, loads the checkpoint it names (`--model OUT_DIR/checkpoints/best`).
A directory is written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint under its final name. Nothing is ever unpickled beyond plain data (see
`openslip.weights.safe_load`): loading a checkpoint never runs code from it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openslip.errors import CheckpointError
from openslip.files import DOCUMENT_BYTES, POINTER_BYTES, FileError, open_regular, read_text
from openslip.models import SLIP, ModelConfig, model_config
from openslip.models.variants import MODELS
from openslip.outputs import check_output_dir
from openslip.registry import UnknownNameError
from openslip.version import __version__
from openslip.weights.atomic import fsync_dir, fsync_file, move_files_into, staging_dir, write_bytes
from openslip.weights.clip_layout import CLIP_PREPROCESS, clip_to_openslip, is_clip_layout
from openslip.weights.safe_load import (
    CONFIG_METADATA_KEY,
    check_plain_data,
    config_from_metadata,
    describe_file,
    key_summary,
    load_safetensors,
    read_config_document,
    read_json,
    read_safetensors_header,
    read_torch_checkpoint,
    torch_load_data,
)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAIN_STATE_FILE = "train_state.pt"
LATEST_FILE = "latest"
BEST_FILE = "best"  # names the checkpoint that scored best on eval.best_metric (openslip.train.best)
POINTER_FILES = (LATEST_FILE, BEST_FILE)
# SHA-256 of every other file of the checkpoint, written last: a flipped byte in a file that still parses (a
# zip's stored tensor data, a safetensors payload) is caught on resume and on load instead of training on it.
CHECKSUM_FILE = "checksums.json"
CHECKPOINTS_DIR = "checkpoints"
FORMAT_VERSION = 1
_RESERVED_KEYS = ("format_version", "openslip_version", "model")
_STEP_RE = re.compile(r"step_(\d+)")
_STAGING_RE = re.compile(r"\.(?:tmp|old)-step_(\d+)")
# "... I/O error: No space left on device (os error 28)": how safetensors' writer reports the errno it got
_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")
PathLike = str | os.PathLike


def checkpoint_dir_name(step: int) -> str:
    """`step_0000500`: the name of the checkpoint directory for a training step (docs/DESIGN.md, 'Run directory')."""
    return f"step_{step:07d}"


# ---------------------------------------------------------------------------------------------- saving


def unwrap_model(model: nn.Module) -> SLIP:
    """The SLIP module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            break
    if not isinstance(getattr(model, "cfg", None), ModelConfig):
        raise TypeError(f"expected an openslip model with a ModelConfig `.cfg`, got {type(model).__name__}")
    return model  # type: ignore[return-value]


def _tensors_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` as contiguous CPU tensors, one storage each.

    safetensors refuses tensors that share memory; a tied or aliased entry gets its own copy so that the
    file's keys stay exactly the state-dict keys (loading copies both back into the one shared tensor).
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        out[key] = t
    return out


def _check_finite(tensors: dict[str, torch.Tensor], dest: Path) -> None:
    """A checkpoint never holds inf / NaN: such weights come from a diverged step, and saving them would put them
    under a name that looks like progress (and turn the previous good checkpoint into a pruned one)."""
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{dest}: not saved: non-finite values (inf / NaN) in {key_summary(bad)}")


def _config_document(cfg: ModelConfig, extra: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"format_version": FORMAT_VERSION, "openslip_version": __version__, "model": cfg.to_dict()}
    if extra:
        clash = sorted(set(extra) & set(_RESERVED_KEYS))
        if clash:
            raise ValueError(f"config_extra may not set {clash}: openslip writes them")
        doc.update(extra)
    json.dumps(doc)  # a value JSON cannot hold raises TypeError here, before anything touches the disk
    return doc


def _os_error(err: Exception, path: Path) -> OSError:
    """The OSError behind a writer's own exception: safetensors' SafetensorError quotes the errno ("(os error 28)")
    but is no OSError; one that does not is reported as an I/O error with its message."""
    found = _OS_ERROR_RE.search(str(err))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code), str(path))
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return OSError(errno.EIO, f"{os.strerror(errno.EIO)}: {first[:200]}", str(path))


def _write_weights(path: Path, tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata={"format": "pt", CONFIG_METADATA_KEY: json.dumps(doc)})
    except SafetensorError as err:  # a full disk or a file-size limit (EFBIG) arrives here, not as an OSError
        raise _os_error(err, path) from None
    # safetensors writes through a private temporary file (mode 0600); give it the mode every other file of the
    # checkpoint gets from the umask, so that a shared run directory stays readable by its group as before.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    fsync_file(path)


def _write_config(path: Path, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())


class _RecordingWriter:
    """A file's `write` that keeps the first OSError it raised. torch.save's zip writer calls it and turns that
    error into `RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos`, which no longer says that
    the disk is full; `_write_train_state` raises the recorded OSError instead."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self._f.flush()


def _write_train_state(path: Path, train_state: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(train_state, writer)
        except RuntimeError as err:
            if writer.error is not None:
                raise writer.error from None
            if "inline_container" in str(err) or "PytorchStreamWriter" in str(err):  # the zip writer's own failure
                raise _os_error(err, path) from None
            raise
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, "rb", error=CheckpointError) as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _write_checksums(ckpt: Path) -> None:
    sums = {p.name: file_sha256(p) for p in sorted(ckpt.iterdir()) if p.is_file() and p.name != CHECKSUM_FILE}
    with open(ckpt / CHECKSUM_FILE, "w", encoding="utf-8") as f:
        f.write(json.dumps(sums, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())


def checksum_problem(ckpt: Path, names: tuple[str, ...] | None = None) -> str | None:
    """Which file of `ckpt` no longer matches the checksum saved with it (None: all match); with `names`, only
    those files (when listed). A checkpoint written before checksums existed has no checksums.json and is not
    checked."""
    path = ckpt / CHECKSUM_FILE
    if not path.is_file():
        return None
    try:
        sums = json.loads(read_text(path, limit=DOCUMENT_BYTES))
    except (OSError, FileError, json.JSONDecodeError, RecursionError) as err:
        return f"{path}: unreadable ({err})"
    if not isinstance(sums, dict):
        return f"{path}: not a mapping of file names to checksums"
    for name, expected in sums.items():
        if names is not None and name not in names:
            continue
        target = ckpt / str(name)
        if not target.is_file():
            return f"{target}: missing (listed in {CHECKSUM_FILE})"
        if file_sha256(target) != expected:
            return (
                f"{target}: corrupt (its SHA-256 differs from the one saved with it; "
                f"if it was edited on purpose, delete {CHECKSUM_FILE})"
            )
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _move_into_place(staged: Path, final: Path) -> None:
    """Rename `staged` to `final`; an existing `final` is moved aside first (rename cannot replace a
    non-empty directory) and deleted only once the new one is in place."""
    if final.exists() or final.is_symlink():
        old = final.with_name(f".old-{final.name}")
        _remove(old)
        os.replace(final, old)
        os.replace(staged, final)
        _remove(old)
    else:
        os.replace(staged, final)
    fsync_dir(final.parent)


def write_pointer(root: Path, name: str, pointer: str = LATEST_FILE) -> None:
    """Point `root/pointer` (`latest` or `best`) at the checkpoint directory `name`, atomically: a failed write
    leaves the pointer naming the previous checkpoint."""
    write_bytes(root / pointer, (name + "\n").encode("utf-8"))


def save_checkpoint(
    dir_path: PathLike,
    model: nn.Module,
    *,
    config_extra: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    update_latest: bool = True,
) -> Path:
    """Write an openslip checkpoint directory atomically and return its path.

    `config_extra` adds JSON entries to config.json (e.g. `train_config`, `step`); `train_state` (tensors and
    plain python containers only) goes to train_state.pt. Everything is written and fsync'd in a hidden
    sibling `.tmp-NAME` and then renamed to NAME. When NAME is a `step_N` directory, the sibling `latest`
    file is then pointed at it (unless `update_latest=False`).

    Weights holding inf / NaN are refused (`CheckpointError`) before anything is written. A write the system
    refuses (a full disk, a quota, a file-size limit) raises `OSError` with its errno, whatever the writer
    library raised; the staged copy is removed and an existing NAME and `latest` stay as they were.
    """
    final = Path(dir_path)
    model = unwrap_model(model)
    doc = _config_document(model.cfg, config_extra)
    if train_state is not None:
        check_plain_data(train_state)
    tensors = _tensors_for_saving(model)
    _check_finite(tensors, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = final.with_name(f".tmp-{final.name}")
    _remove(staged)  # left behind by a save that was killed
    staged.mkdir()
    try:
        _write_weights(staged / MODEL_FILE, tensors, doc)
        _write_config(staged / CONFIG_FILE, doc)
        if train_state is not None:
            _write_train_state(staged / TRAIN_STATE_FILE, train_state)
        _write_checksums(staged)
        fsync_dir(staged)
        _move_into_place(staged, final)
    except BaseException:
        _remove(staged)
        raise
    if update_latest and _STEP_RE.fullmatch(final.name):
        write_pointer(final.parent, final.name)
    return final


def save_model(model: nn.Module, path: PathLike) -> Path:
    """Save a model for later `load_model`: a directory with model.safetensors and config.json."""
    return save_checkpoint(path, model, update_latest=False)


# ----------------------------------------------------------------------------------- run directories


def checkpoint_problem(ckpt_dir: PathLike, *, verify: bool = False) -> str | None:
    """Why `ckpt_dir` is not a complete checkpoint (files missing, truncated, unparsable; with `verify`, a file
    that does not match its saved checksum), or None if it is."""
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        return f"{ckpt}: no such directory"
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (ckpt / name).is_file():
            return f"{ckpt}: no {name}"
    try:
        read_safetensors_header(ckpt / MODEL_FILE)
        read_config_document(ckpt / CONFIG_FILE)
    except CheckpointError as err:
        return str(err)
    state = ckpt / TRAIN_STATE_FILE
    if state.exists() and not zipfile.is_zipfile(state):
        return f"{state}: truncated or corrupt"
    return checksum_problem(ckpt) if verify else None


def _checkpoints_root(run_dir: Path) -> Path:
    sub = run_dir / CHECKPOINTS_DIR
    return sub if sub.is_dir() else run_dir


def list_checkpoints(run_dir: PathLike, *, valid_only: bool = True, verify: bool = False) -> list[Path]:
    """The `step_N` directories of a run (`OUT_DIR` or `OUT_DIR/checkpoints`), oldest step first;
    broken ones are left out unless `valid_only=False` (with `verify`, also those failing their checksums)."""
    root = _checkpoints_root(Path(run_dir))
    if not root.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.fullmatch(p.name)) and p.is_dir())
    return [p for _, p in found if not valid_only or checkpoint_problem(p, verify=verify) is None]


def read_pointer(pointer: Path, verify: bool = False) -> tuple[Path | None, str | None]:
    """(checkpoint named by the pointer file `pointer` (`latest`, `best`) if complete, else why it cannot be used)."""
    root = pointer.parent
    if not pointer.is_file():
        return None, f"{root} has no '{pointer.name}' file"
    try:
        name = read_text(pointer, limit=POINTER_BYTES).strip()
    except (OSError, FileError) as err:
        return None, f"cannot read {pointer} ({err})"
    if not _STEP_RE.fullmatch(name):
        return None, f"{pointer} holds {name[:80]!r}, not a checkpoint name"
    problem = checkpoint_problem(root / name, verify=verify)
    if problem is not None:
        return None, f"{pointer} names a broken checkpoint ({problem})"
    return root / name, None


def is_pointer_file(path: Path) -> bool:
    """A run's `latest` / `best` file: a short text file naming a `step_N` directory beside it."""
    try:
        return path.name in POINTER_FILES and path.is_file() and path.stat().st_size <= POINTER_BYTES
    except OSError:
        return False


def _foreign_export(p: Path) -> str | None:
    """ "timm" / "hf" when the folder is `openslip export --format timm` / `hf` output (another library's format, not
    a broken checkpoint), else None."""
    try:
        doc = json.loads(read_text(p / CONFIG_FILE, limit=DOCUMENT_BYTES))
    except Exception:  # unreadable: the checkpoint's own problem says why
        return None
    if not isinstance(doc, dict) or "model" in doc:
        return None
    if {"architecture", "model_args"} <= doc.keys():
        return "timm"
    if doc.get("model_type") == "clip":
        return "hf"
    return None


_FOREIGN = {
    "timm": "a timm export (`openslip export --format timm`: the vision tower in timm's names)",
    "hf": "a transformers CLIPModel (`openslip export --format hf`: the CLIP part in transformers' names)",
}


def find_latest_checkpoint(run_dir: PathLike, *, verify: bool = False) -> Path | None:
    """The checkpoint `OUT_DIR/checkpoints/latest` names; if that file is missing or names a broken
    checkpoint (with `verify`: or one failing its checksums), the highest-numbered complete `step_N` with a
    warning naming the broken one; None when there is none."""
    root = _checkpoints_root(Path(run_dir))
    if not root.is_dir():
        return None
    found, reason = read_pointer(root / LATEST_FILE, verify)
    if found is not None:
        return found
    candidates = list_checkpoints(root, verify=verify)
    if candidates:
        warnings.warn(f"{reason}; using {candidates[-1].name}, the newest complete checkpoint", stacklevel=2)
        return candidates[-1]
    return None  # callers that need one say why each is unusable (`unusable_checkpoints`)


def unusable_checkpoints(run_dir: PathLike, *, verify: bool = False) -> list[tuple[Path, str]]:
    """(directory, why it cannot be used) for each broken `step_N` directory of a run, newest first; with
    `verify`, those failing their checksums too."""
    dirs = reversed(list_checkpoints(run_dir, valid_only=False))
    return [(p, problem) for p in dirs if (problem := checkpoint_problem(p, verify=verify)) is not None]


def describe_unusable(found: list[tuple[Path, str]], n: int = 3) -> str:
    """`unusable_checkpoints` on one line: the first `n` reasons and how many there are."""
    shown = "; ".join(problem for _, problem in found[:n])
    return shown + (f"; ... ({len(found)} checkpoints in all)" if len(found) > n else "")


def resolve_checkpoint(path: PathLike, *, verify: bool = False) -> Path:
    """The checkpoint directory for a checkpoint directory or a run directory (its newest checkpoint); with
    `verify`, its files must match their checksums (a run directory falls back to an older good one)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.is_file() and p.name == CONFIG_FILE:
        p = p.parent
    if is_pointer_file(p):  # OUT_DIR/checkpoints/best (or latest): the checkpoint it names, nothing else
        found, reason = read_pointer(p, verify)
        if found is None:
            raise CheckpointError(f"cannot load {p}: {reason}")
        return found
    if (p / CONFIG_FILE).exists() or (p / MODEL_FILE).exists():
        problem = checkpoint_problem(p, verify=verify)
        foreign = _foreign_export(p) if problem is not None else None
        if foreign is not None:  # not broken: another library's format
            raise CheckpointError(
                f"{p} is {_FOREIGN[foreign]}, which openslip does not read back: load it with "
                f"{'timm' if foreign == 'timm' else 'transformers'} (docs/INTEROP.md), or give the run or checkpoint "
                "it was exported from (an `--format openslip` export reads back)"
            )
        if problem is not None:
            raise CheckpointError(f"broken checkpoint: {problem}")
        return p
    if p.is_dir():
        found = find_latest_checkpoint(p, verify=verify)
        if found is not None:
            return found
        broken = unusable_checkpoints(p, verify=verify)
        if broken:
            raise CheckpointError(f"{p}: no checkpoint of this run can be used: {describe_unusable(broken)}")
        raise CheckpointError(f"{p}: neither a checkpoint ({MODEL_FILE} + {CONFIG_FILE}) nor a run directory with one")
    raise CheckpointError(f"{p}: not a checkpoint directory")


def prune_checkpoints(run_dir: PathLike, keep_last: int) -> list[Path]:
    """Delete all but the `keep_last` newest complete checkpoints (and whatever `latest` and `best` name); older
    broken checkpoints and leftovers of interrupted saves go too. Returns the removed paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = _checkpoints_root(Path(run_dir))
    keep = set(list_checkpoints(root)[-keep_last:])
    for name in POINTER_FILES:  # the best checkpoint is never pruned, however old
        pointed, _ = read_pointer(root / name) if root.is_dir() else (None, None)
        if pointed is not None:
            keep.add(pointed)
    if not keep:
        return []
    newest = max(int(_STEP_RE.fullmatch(p.name).group(1)) for p in keep)  # type: ignore[union-attr]
    removed = []
    for p in sorted(root.iterdir()):
        m = _STEP_RE.fullmatch(p.name) or _STAGING_RE.fullmatch(p.name)
        if m and p not in keep and int(m.group(1)) < newest:
            _remove(p)
            removed.append(p)
    return removed


def load_checkpoint_config(path: PathLike) -> dict[str, Any]:
    """config.json of a checkpoint (or of a run's newest one), or the config inside a lone .safetensors file."""
    p = Path(path)
    if p.is_file() and describe_file(p) == "safetensors":
        return config_from_metadata(read_safetensors_header(p).get("__metadata__") or {}, p)
    return read_config_document(resolve_checkpoint(p) / CONFIG_FILE)


def load_train_state(
    ckpt_dir: PathLike, map_location: str | torch.device = "cpu", *, verify: bool = True
) -> dict[str, Any]:
    """The training state saved with a checkpoint (or with a run's newest one), loaded as data only."""
    ckpt = resolve_checkpoint(ckpt_dir, verify=verify)
    path = ckpt / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: no {TRAIN_STATE_FILE}; a weights-only checkpoint cannot resume training")
    state = torch_load_data(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a training-state dict")
    return state


# --------------------------------------------------------------------------------------------- loading


def _registered_config(name: str, source: Path) -> ModelConfig:
    try:
        return model_config(name)
    except UnknownNameError as err:
        raise CheckpointError(f"{source}: {err}") from None


def _config_from_spec(spec: Any, source: Path) -> ModelConfig:
    """A ModelConfig from config.json's "model" entry: a full config dict, or a registered name."""
    if isinstance(spec, dict) and set(spec) == {"name"}:
        spec = spec["name"]
    if isinstance(spec, str):
        return _registered_config(spec, source)
    if not isinstance(spec, dict):
        raise CheckpointError(f"{source}: the 'model' entry is a {type(spec).__name__}, not a model config")
    try:
        return ModelConfig.from_dict(spec)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{source}: invalid model config ({err})") from None


def _check_requested_name(cfg: ModelConfig, model_name: str | None, source: Path) -> None:
    if model_name is None:
        return
    wanted = _registered_config(model_name, source).name
    if wanted != cfg.name:
        raise CheckpointError(f"{source}: holds model {cfg.name!r}, not the requested {model_name!r}")


def _new_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype | None, *, uninitialised: bool) -> SLIP:
    """A model to load weights into; with `uninitialised`, built on the meta device and allocated without
    the random initialisation (every entry is about to be overwritten)."""
    if uninitialised:
        with torch.device("meta"):
            model = SLIP(cfg)
        saved = model.state_dict().keys()
        if all(name in saved for name, _ in model.named_buffers()):  # no buffer would stay uninitialised
            return model.to(dtype=dtype).to_empty(device=device) if dtype else model.to_empty(device=device)
    model = SLIP(cfg)
    return model.to(device=device, dtype=dtype) if dtype else model.to(device)


def _fit_problems(model: SLIP, sd: dict[str, torch.Tensor], strict: bool, source: Path) -> list[str]:
    """Missing / unexpected keys of `sd` for `model` (which may live on the meta device); a shape mismatch, or
    any problem when `strict`, raises."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k} {list(sd[k].shape)} vs {list(t.shape)}" for k, t in expected.items() if k in sd and sd[k].shape != t.shape
    ]
    # Floating parameters load from floating data only: a float tensor relabelled I32 in a safetensors header (or
    # integers where weights belong) would be copied in as numbers around 1e9. Any float width loads (bf16 exports).
    dtypes = [
        f"{k} {str(sd[k].dtype).removeprefix('torch.')} for {str(t.dtype).removeprefix('torch.')}"
        for k, t in expected.items()
        if k in sd and t.is_floating_point() and not sd[k].is_floating_point()
    ]
    problems = [f"shape mismatch (file vs model): {key_summary(shapes)}"] if shapes else []
    if dtypes:
        problems.append(f"non-floating data for floating parameters (file vs model): {key_summary(dtypes)}")
    if missing:
        problems.append(f"missing keys: {key_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {key_summary(unexpected)}")
    if shapes or dtypes or (strict and problems):
        raise CheckpointError(f"{source}: weights do not fit model {model.cfg.name!r}: " + "; ".join(problems))
    return problems


def _load_into(model: SLIP, sd: dict[str, torch.Tensor], strict: bool, source: Path) -> None:
    problems = _fit_problems(model, sd, strict, source)
    if problems:
        warnings.warn(f"{source}: loading non-strictly into {model.cfg.name!r}: " + "; ".join(problems), stacklevel=2)
    # A model never holds inf / NaN on purpose: such weights come from a diverged run or a damaged file, and
    # would silently turn every embedding computed from them into NaN.
    bad = [k for k, t in sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{source}: non-finite values (inf / NaN) in {key_summary(bad)}")
    model.load_state_dict(sd, strict=strict)


def _file_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The floating dtype the weights were saved in when it is one other than float32 (e.g. a bf16 export)."""
    dtypes = {t.dtype for t in sd.values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 and torch.float32 not in dtypes else None


def _build(cfg: ModelConfig, sd: dict[str, torch.Tensor], device: torch.device, strict: bool, source: Path) -> SLIP:
    with torch.device("meta"):  # shapes without memory: a config claiming a huge model fails here, allocating nothing
        _fit_problems(SLIP(cfg), sd, strict, source)
    model = _new_model(cfg, device, _file_dtype(sd), uninitialised=strict)
    _load_into(model, sd, strict, source)
    return model.eval()


def _reference_config(name: str, args: dict[str, Any], source: Path) -> ModelConfig:
    """The config of a reference model name ("SLIP_VITB16" or an openslip name) with the run's SimCLR
    head sizes (the reference's --ssl-mlp-dim / --ssl-emb-dim) when its args record them."""
    cfg = _registered_config(name, source)
    if cfg.ssl_head is not None:
        head = {"mlp_dim": args.get("ssl_mlp_dim"), "out_dim": args.get("ssl_emb_dim")}
        cfg.ssl_head = replace(cfg.ssl_head, **{k: int(v) for k, v in head.items() if v is not None})
    return cfg


# What config.json of converted CLIP weights records beside the model: CLIP's own preprocessing.
_CLIP_EXTRA = {"extra": {"preprocess": CLIP_PREPROCESS}}


def _clip_layout(sd: dict[str, torch.Tensor], path: Path, model_name: str | None, clip: dict[str, Any]):
    """An OpenAI / open_clip state dict as (openslip config, openslip state dict), or None for other layouts."""

    if not is_clip_layout(sd):
        return None
    if model_name is not None:
        raise CheckpointError(
            f"{path}: an OpenAI / open_clip CLIP state dict; its architecture is read from the weights, so drop "
            "model_name (CLI: --model)"
        )
    return clip_to_openslip(sd, source=str(path), **clip)


def _load_torch_file(path: Path, device: torch.device, strict: bool, model_name: str | None, clip: dict[str, Any]):
    sd, args, info = read_torch_checkpoint(path, device)
    if (found := _clip_layout(sd, path, model_name, clip)) is not None:
        return _build(found[0], found[1], device, strict, path), {**info, "format": "open_clip", **_CLIP_EXTRA}
    recorded = args.get("model")
    if recorded is not None and model_name is not None:
        if _registered_config(recorded, path).name != _registered_config(model_name, path).name:
            raise CheckpointError(f"{path}: was trained as {recorded!r}, not the requested {model_name!r}")
    name = model_name or recorded
    if not isinstance(name, str):
        raise CheckpointError(
            f"{path}: the file does not say which model it holds; pass model_name= "
            "(CLI: --model NAME --pretrained FILE), "
            f"one of: {', '.join(MODELS.names())}"
        )
    return _build(_reference_config(name, args, path), sd, device, strict, path), info


def _load_safetensors_file(
    path: Path, device: torch.device, strict: bool, model_name: str | None, clip: dict[str, Any]
):
    sd, meta = load_safetensors(path, device)
    if CONFIG_METADATA_KEY not in meta and not (path.parent / CONFIG_FILE).is_file():
        if (found := _clip_layout(sd, path, model_name, clip)) is not None:  # open_clip's open_clip_model.safetensors
            return _build(found[0], found[1], device, strict, path), {"format": "open_clip", **_CLIP_EXTRA}
    doc, source = None, path.parent / CONFIG_FILE
    if source.is_file():
        found = read_json(source)
        doc = found if isinstance(found, dict) and "model" in found else None
    if doc is None and CONFIG_METADATA_KEY in meta:
        doc, source = config_from_metadata(meta, path), path
    if doc is not None:
        cfg = _config_from_spec(doc["model"], source)
        _check_requested_name(cfg, model_name, path)
    elif model_name is not None:
        cfg, doc = _registered_config(model_name, path), {}
    else:
        raise CheckpointError(
            f"{path}: no openslip {CONFIG_FILE} next to it; pass model_name= (CLI: --model NAME --pretrained FILE)"
        )
    extra = {k: v for k, v in doc.items() if k not in _RESERVED_KEYS and k != "converted_from"}
    return _build(cfg, sd, device, strict, path), {"format": "openslip", "extra": extra}


def _load(
    path: Path,
    map_location: str | torch.device,
    strict: bool,
    model_name: str | None,
    clip: dict[str, Any] | None = None,
):
    clip = {k: v for k, v in (clip or {}).items() if v is not None}
    device = torch.device(map_location)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir() or path.name == CONFIG_FILE or is_pointer_file(path):
        ckpt = resolve_checkpoint(path, verify=True)
        return _load_safetensors_file(ckpt / MODEL_FILE, device, strict, model_name, clip)
    kind = describe_file(path)
    if kind == "safetensors" or (path.suffix == ".safetensors" and kind not in ("torch-zip", "pickle")):
        # a checkpoint's weights named by their path are checked like the directory: against its checksums.json
        problem = checksum_problem(path.parent, names=(path.name, CONFIG_FILE))
        if problem is not None:
            raise CheckpointError(f"broken checkpoint: {problem}")
        return _load_safetensors_file(path, device, strict, model_name, clip)
    if kind in ("torch-zip", "pickle"):
        return _load_torch_file(path, device, strict, model_name, clip)
    raise CheckpointError(f"{path}: not a checkpoint (it looks like {kind})")


def load_model(
    path: PathLike,
    *,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    model_name: str | None = None,
    activation: str | None = None,
    head_width: int | None = None,
) -> SLIP:
    """Load a model, in eval mode, from any of:

    - an openslip checkpoint directory (model.safetensors + config.json), or its config.json;
    - a run directory `OUT_DIR` (or `OUT_DIR/checkpoints`): the checkpoint `latest` names;
    - a run's pointer file `OUT_DIR/checkpoints/best` (or `.../latest`): the checkpoint it names (the one that
      scored best on `eval.best_metric`, docs/TRAINING.md);
    - a `.safetensors` file, configured by the config.json beside it or its own metadata;
    - an original SLIP reference `.pt` checkpoint (model from its `args.model`), or a bare state dict
      saved with `torch.save` when `model_name` says which model it is;
    - an OpenAI CLIP or open_clip ViT state dict (`.pt` / `.bin` / `.safetensors`), architecture read from its
      shapes; `activation` ("gelu" / "quick_gelu") is needed unless the file is OpenAI's, `head_width` (default 64)
      gives the head count (docs/INTEROP.md).

    Files are read as data only. Weights keep the dtype they were saved in when it is uniform.
    """
    clip = {"activation": activation, "head_width": head_width}
    model, info = _load(Path(path), map_location, strict, model_name, clip)
    recorded = (info.get("extra") or {}).get("preprocess")
    if recorded:  # weights trained with other image statistics (CLIP's): evaluation normalises as they did
        model.preprocess = dict(recorded)
    return model


def read_weights(
    path: PathLike, device: torch.device | str = "cpu", *, verify: bool = False
) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint (or a run's newest one), as saved (a sharded model loads it its own way)."""
    return load_safetensors(resolve_checkpoint(path, verify=verify) / MODEL_FILE, device)[0]


def load_weights(model: nn.Module, path: PathLike, *, strict: bool = True, verify: bool = True) -> None:
    """Copy the weights of a checkpoint (or a run's newest one) into an existing, possibly wrapped, model."""
    ckpt = resolve_checkpoint(path, verify=verify)
    inner = unwrap_model(model)
    device = next(inner.parameters()).device
    sd, _ = load_safetensors(ckpt / MODEL_FILE, device)
    _load_into(inner, sd, strict, ckpt)


def convert(
    src: PathLike,
    dst: PathLike,
    *,
    model_name: str | None = None,
    overwrite: bool = False,
    map_location: str | torch.device = "cpu",
    activation: str | None = None,
    head_width: int | None = None,
) -> Path:
    """Convert any checkpoint `load_model` reads (an original SLIP `.pt`, an OpenAI / open_clip state dict) to the
    openslip format.

    `dst` becomes a checkpoint directory (model.safetensors + config.json + checksums.json); config.json records
    where the weights came from (`converted_from`: path, epoch, the reference's args). An existing `dst` needs
    `overwrite` and must be an earlier conversion: a run, another checkpoint, the source or a folder holding other
    files is refused (`openslip.outputs`), and only convert's three files are replaced.
    """
    src_path, dst_path = Path(src), Path(dst)
    check_output_dir(
        dst_path,
        option="DST",
        own=_CONVERTED_FILES.__contains__,
        sources=[src_path],
        force=overwrite,
        previous=_is_converted,
    )
    clip = {"activation": activation, "head_width": head_width}
    model, info = _load(src_path, map_location, True, model_name, clip)
    extra = dict(info.pop("extra", {}))
    extra["converted_from"] = {"path": str(src_path), **info}
    # File by file into DST (save_checkpoint would replace the whole folder): nothing but convert's files changes.
    with staging_dir(dst_path) as staging:
        save_checkpoint(staging / "files", model, config_extra=extra, update_latest=False)
        move_files_into(staging / "files", dst_path, last=CHECKSUM_FILE)
    return dst_path


_CONVERTED_FILES = frozenset({MODEL_FILE, CONFIG_FILE, CHECKSUM_FILE})


def _is_converted(folder: Path) -> bool:
    """An earlier `convert`'s output: its config.json records `converted_from` (a trained or saved model does not)."""
    try:
        doc = read_json(folder / CONFIG_FILE)
    except CheckpointError:
        return False
    return isinstance(doc, dict) and "converted_from" in doc
