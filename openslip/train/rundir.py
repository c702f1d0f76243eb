"""A run's directory: its lock, its config.yaml, the checkpoint a resume continues, and whether the settings a
checkpoint was trained with differ from the config's (`changed_settings`, also behind `openslip compare`'s refusal
of an out_dir that holds another experiment: `first_difference`)."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openslip.distributed import DistInfo, broadcast_object
from openslip.errors import CheckpointError, ConfigError, TrainingError, UserError
from openslip.overrides import MISSING, setting_changes
from openslip.train.config import Config, save_yaml
from openslip.weights import checkpoint as ckpt

LOCK_FILE = ".lock"


# --- the lock ---------------------------------------------------------------------------------------


def prepare_run_dir(cfg: Config, dist: DistInfo) -> tuple[Path, int | None]:
    """Create `out_dir` and lock it for this run (rank 0; the ranks of one job share it). Returns the run dir
    and the lock's file descriptor (None off rank 0): `release_run_dir` or the process's end frees it."""
    run_dir = Path(cfg.out_dir)
    problem, fd = None, None
    if dist.is_main:
        try:
            fd = _lock_run_dir(run_dir)
        except UserError as err:
            problem = str(err)
    problem = broadcast_object(problem)  # every rank stops with rank 0's message instead of waiting for it
    if problem:
        raise ConfigError(problem)
    return run_dir, fd


def _lock_run_dir(run_dir: Path) -> int:
    # A POSIX record lock (lockf) belongs to this process: the kernel drops it when the process ends in any
    # way (SIGKILL, OOM), so a lock file left by a dead run never blocks the next one. Unlike flock it is not
    # shared with forked data-loader workers, which may outlive a killed trainer by a few seconds.
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not run_dir.is_dir():
            raise ConfigError(f"out_dir={str(run_dir)!r} is not a directory")
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise ConfigError(f"out_dir={str(run_dir)!r} is a file, not a directory") from None
    except OSError as err:
        raise ConfigError(f"out_dir={str(run_dir)!r} cannot be used: {err.strerror or err}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if err.errno in (errno.EACCES, errno.EAGAIN):
            raise ConfigError(
                f"out_dir={str(run_dir)!r} is in use by another openslip train (pid {holder}); "
                "wait for it to end or choose another out_dir"
            ) from None
        raise ConfigError(f"out_dir={str(run_dir)!r} cannot be locked: {err.strerror or err}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as err:
        os.close(fd)
        raise ConfigError(f"out_dir={str(run_dir)!r} cannot be written: {err.strerror or err}") from None
    return fd


def release_run_dir(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # drops the lock; the file stays (deleting it would race with a run taking it)


def write_run_config(cfg: Config, run_dir: Path) -> None:
    try:
        save_yaml(cfg, run_dir / "config.yaml")
    except OSError as err:
        raise ConfigError(f"cannot write {run_dir / 'config.yaml'}: {err.strerror or err}") from None


# --- the checkpoint a resume continues ----------------------------------------------------------------


def resume_checkpoint(cfg: Config, run_dir: Path, message: Callable[[str], None]) -> Path | None:
    """The checkpoint `cfg.resume` continues: "auto" (the run's newest valid checkpoint, if any), "none", or a path;
    None to start from step 0. The settings check runs whichever checkpoint is chosen, also with resume_force=true
    (a warning then names what changed)."""
    choice = cfg.resume
    if choice == "none":
        return None
    if choice == "auto":
        path = _auto_checkpoint(run_dir, cfg.resume_force, message)
        if path is None:
            return None
    else:
        path = _named_checkpoint(choice, cfg.resume_force, message)
    changed = changed_settings(ckpt.load_checkpoint_config(path).get("train_config"), cfg.to_dict())
    if changed and not cfg.resume_force:
        raise ConfigError(
            f"checkpoint {path} was trained with other settings ({'; '.join(changed)}): use another out_dir, "
            "or resume_force=true to continue it with the new values"
        )
    if changed:
        message(f"warning: resume_force=true: continuing {path} with changed settings: {'; '.join(changed)}")
    return path


def _auto_checkpoint(run_dir: Path, force: bool, message: Callable[[str], None]) -> Path | None:
    """The checkpoint resume=auto continues: the newest whose files match their checksums (an older good one, with
    a warning, when the newest is broken). None only for a run without `step_N` directories (a new run, or one
    stopped before its first checkpoint), which starts from step 0.

    A run whose checkpoints exist but none is usable is never trained over from step 0: that would overwrite its
    config.yaml, metrics.jsonl and checkpoints, whose weights may well be intact (a damaged checksums.json). It
    stops in one line instead; with resume_force=true it trusts the newest checkpoint whose files parse."""
    if not (run_dir / ckpt.CHECKPOINTS_DIR).exists():
        return None
    found = ckpt.find_latest_checkpoint(run_dir, verify=True)
    if found is not None:
        return found
    broken = ckpt.unusable_checkpoints(run_dir, verify=True)
    if not broken:
        return None
    reasons = ckpt.describe_unusable(broken)
    root = run_dir / ckpt.CHECKPOINTS_DIR
    complete = ckpt.list_checkpoints(run_dir)  # every file parses; checksums not checked
    if complete and force:
        message(f"warning: resume_force=true: resuming from {complete[-1]}, whose checksums do not match ({reasons})")
        return complete[-1]
    if complete:
        raise TrainingError(
            f"cannot resume: no checkpoint in {root} passes its checksums ({reasons}); add resume_force=true to trust "
            f"the weights of {complete[-1].name}, or choose a new out_dir to start over"
        )
    raise TrainingError(
        f"cannot resume: no checkpoint in {root} is complete ({reasons}); choose a new out_dir to start over "
        "(this run's files are left as they are)"
    )


def _named_checkpoint(choice: str, force: bool, message: Callable[[str], None]) -> Path:
    """resume=PATH: that checkpoint (a run directory: its newest good one); one whose checksums fail is refused,
    or with resume_force=true used with a warning when its files parse."""
    try:
        return ckpt.resolve_checkpoint(choice, verify=True)
    except CheckpointError as err:
        try:
            path = ckpt.resolve_checkpoint(choice, verify=False)
        except CheckpointError:
            raise err from None
        if not force:
            raise CheckpointError(f"{err}; add resume_force=true to trust its weights") from None
        message(f"warning: resume_force=true: resuming from {path}, whose checksums do not match ({err})")
        return path


# --- what changed since a run was started ---------------------------------------------------------------

# Settings a resumed run may change without changing what it trains: its length (the schedule follows
# train.steps), logging, checkpointing, evaluation, loader processes and the run's plumbing.
RESUMABLE_CHANGES = (
    "out_dir",
    "resume",
    "resume_force",
    "recipe",  # a label; the values it set are compared one by one
    "train.steps",
    "train.accum_steps",  # exact over the whole batch (accumulate.py): a memory setting
    "train.log_every",
    "train.progress",
    "train.print_every",
    "train.wandb",
    "train.wandb_project",
    "train.compile",
    "train.compile_mode",
    "train.grad_checkpointing",
    "train.parallel",  # DDP and FSDP train alike and save the same checkpoint (train/parallel.py)
    "train.collective_timeout_s",
    "data.num_workers",
    "data.worker_priority",
    "data.decode",  # where the JPEGs are decoded: the same images (equal on a CPU; tests/test_device_decode.py)
    "ckpt.",
    "eval.",
)


def changed_settings(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """`key saved -> current` for each setting a resumed run may not change that differs. Keys a checkpoint lacks
    (written by an older openslip) are not compared, nor settings whose shape (a section or a value) changed."""
    if not isinstance(saved, dict):  # a converted or exported model: no run settings to compare
        return []
    free = [k for k in RESUMABLE_CHANGES if not k.endswith(".")]
    free_sections = tuple(k for k in RESUMABLE_CHANGES if k.endswith("."))
    changed = []
    for path, old, new in setting_changes(saved, current):
        key = ".".join(path)
        if old is MISSING or new is MISSING or isinstance(old, dict) or isinstance(new, dict):
            continue
        if key in free or key.startswith(free_sections):
            continue
        changed.append(f"{key} {old!r} -> {new!r}")
    return changed


def first_difference(old: Any, new: Any) -> str | None:
    """The first key path (in sorted order) at which two JSON-like values differ, with both values (a key one side
    lacks reads as None); None when equal."""
    changes = list(setting_changes(old, new, missing=None))
    if not changes:
        return None
    path, before, after = min(changes, key=lambda change: change[0])
    return f"{'.'.join(map(str, path)) or 'settings'}: {before!r} then, {after!r} now"
