"""Where a command may write: the one rule every writer of the command line follows.

A command writes only its own files. It never writes into a training run's own files (config.yaml,
metrics.jsonl, the lock, checkpoints/, ...) or inside a checkpoint directory, never over an input it reads, and
a command that fills a folder (export, convert, make-shards) refuses a folder that holds anything it would not
write: `--force` replaces its own files, one at a time, and never removes the folder or anything else in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from openslip.errors import ConfigError

PathLike = str | os.PathLike
# What `openslip train` keeps in a run directory (train/rundir.py, train/run_log.py): the run's own entries.
RUN_ENTRIES = frozenset({"config.yaml", "metrics.jsonl", ".lock", "checkpoints", "tensorboard", "wandb_id"})
# The files of a checkpoint directory (weights/checkpoint.py): weights + config, and what only a checkpoint holds.
CHECKPOINT_PAIR = ("model.safetensors", "config.json")
CHECKPOINT_ONLY = ("checksums.json", "train_state.pt")

# The staging folders of `openslip.weights.atomic.staging_dir`: a writer's own, also when a kill left one behind.
STAGING_PREFIX = ".openslip-tmp-"


# os.path's tests answer False on any OSError (an unreadable folder), where a Path method may raise.
def is_run_dir(path: Path) -> bool:
    """A training run's directory: its checkpoints/ folder, its metrics.jsonl or its lock."""
    return os.path.isdir(path) and (
        os.path.isdir(path / "checkpoints")
        or os.path.lexists(path / "metrics.jsonl")
        or os.path.lexists(path / ".lock")
    )


def is_checkpoint_dir(path: Path) -> bool:
    """An openslip checkpoint directory (a training step, `save_model`, `convert` or an hf export)."""
    if not os.path.isdir(path):
        return False
    return all(os.path.lexists(path / name) for name in CHECKPOINT_PAIR) or any(
        os.path.lexists(path / name) for name in CHECKPOINT_ONLY
    )


def _creatable(out: Path, option: str) -> None:
    """A missing output's nearest existing ancestor must be a folder (else mkdir would end in a traceback)."""
    for parent in _absolute(out).parents:
        if os.path.lexists(parent):
            if not os.path.isdir(parent):
                raise ConfigError(f"{option} {out}: {parent} is a file, not a folder")
            return


def _absolute(path: PathLike) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _resolved(path: PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))  # symlinks followed: a link to a run is the run


def protection(path: PathLike) -> str | None:
    """Why writing at `path` could damage a run or a checkpoint, as "is ..." (None: it cannot): `path` is a run
    directory, one of a run's own entries or inside one, or inside a checkpoint directory."""
    for p in dict.fromkeys((_absolute(path), _resolved(path))):  # the path as typed and where its links lead
        if is_run_dir(p):
            return "is a training run directory"
        child = p
        for parent in p.parents:
            if is_checkpoint_dir(parent):
                return f"is inside the checkpoint directory {parent}"
            if child.name in RUN_ENTRIES and is_run_dir(parent):
                if is_checkpoint_dir(p):
                    return f"is a checkpoint directory of the run {parent}"
                return f"is {'' if child == p else 'inside '}the run {parent}'s own {child.name}"
            child = parent
    return None


def _sources(sources: Iterable[PathLike | None]) -> list[Path]:
    return [_resolved(s) for s in sources if s is not None and str(s) and os.path.exists(Path(s).expanduser())]


def check_output_file(path: PathLike, *, option: str, sources: Iterable[PathLike | None] = ()) -> Path:
    """Refuse (one line) a file output that would overwrite a run's or a checkpoint's file, a folder, or an input
    of the same command; returns the path."""
    out = Path(path).expanduser()
    problem = protection(out)
    if problem:
        raise ConfigError(f"{option} {out}: {problem}; write it elsewhere")
    if os.path.isdir(out):
        raise ConfigError(f"{option} {out}: is a folder; name a file")
    _creatable(out, option)
    if _resolved(out) in _sources(sources):
        raise ConfigError(f"{option} {out}: is an input of this command; write it elsewhere")
    return out


def check_output_dir(
    path: PathLike,
    *,
    option: str,
    own: Callable[[str], bool] | None,
    sources: Iterable[PathLike | None] = (),
    force: bool | None = None,
    previous: Callable[[Path], bool] | None = None,
    force_flag: str = "--force",
) -> Path:
    """Refuse (one line) a folder the command may not write into; returns the path.

    Refused always: a file; a run directory or one of a run's entries; anything inside a checkpoint directory;
    an input of the command. `own(name)` tells the entries a command that fills the folder writes: anything else
    in it refuses the folder, with or without `force`, and so does a folder holding an input. `own` None: the
    command shares the folder (plot's PNGs, a feature cache). A folder that is a checkpoint directory is accepted
    only when `previous(folder)` recognises it as the command's own earlier output. `force`: None when the
    command has no such flag; False refuses any existing folder, even an empty one (naming `force_flag`).
    """
    out = Path(path).expanduser()
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ConfigError(f"{option} {out}: is a file, not a folder")
    _creatable(out, option)
    problem = protection(out)
    if problem:
        raise ConfigError(f"{option} {out}: {problem}; choose a new folder")
    target = _resolved(out)
    for source in _sources(sources):
        if source == target or (own is not None and target in source.parents):
            raise ConfigError(f"{option} {out}: holds the input of this command; choose a new folder")
    if not os.path.isdir(out):
        return out
    try:
        entries = sorted(os.listdir(out))
    except OSError as err:
        raise ConfigError(f"{option} {out}: cannot be read: {err.strerror or err}") from None

    def is_foreign(name: str) -> bool:  # an entry the command would not write (a folder is never one of its files)
        if name.startswith(STAGING_PREFIX) or own is None:
            return False
        return not own(name) or os.path.isdir(out / name)

    foreign = [name for name in entries if is_foreign(name)]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConfigError(
            f"{option} {out}: holds {foreign[0]}{more}, which this command does not write; choose a new or empty folder"
        )
    if is_checkpoint_dir(out) and not (previous is not None and previous(out)):
        raise ConfigError(f"{option} {out}: is a checkpoint directory this command did not write; choose a new folder")
    if force is False:
        raise ConfigError(
            f"{option} {out}: already exists (pass {force_flag} to overwrite the files this command wrote)"
        )
    return out
