"""Disk full and file-size limits for real, not faked: a run continues from its step-2 checkpoint on a filesystem
with room for part of the next one only (a small tmpfs, when this test runs as root and may mount), or under a
file-size limit (`ulimit -f`, set with RLIMIT_FSIZE in the child). The write fails inside safetensors (weights) or
inside torch.save (training state), which raise their own exceptions (SafetensorError, RuntimeError from
inline_container), not OSError. The run must end in one line, exit code 2, with the step-2 checkpoint intact, still
`latest`, and no staging directory left."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_utils import overrides

from openslip.weights import checkpoint as ckpt

ENV = dict(os.environ, OMP_NUM_THREADS="1")
FIRST = "step_0000002"
# what the written files may add beside the checkpoints (metrics.jsonl, config.yaml, tmpfs pages) on the small disk
SLACK = 1 << 20


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """A run with its step-2 checkpoint, and the sizes of that checkpoint's files (the next one has the same)."""
    run = tmp_path_factory.mktemp("disk") / "run"
    subprocess.run(_command(run, "train.steps=2"), env=ENV, check=True, capture_output=True, timeout=300)
    files = run / "checkpoints" / FIRST
    sizes = {p.name: p.stat().st_size for p in files.iterdir()}
    assert sizes[ckpt.TRAIN_STATE_FILE] > sizes[ckpt.MODEL_FILE]  # Adam's two moments: the state is the larger file
    return run, sizes


def _command(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "openslip.cli", "train", *overrides(run, "ckpt.every_steps=2", *extra)]


def _continue(run: Path, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """The same run, to step 4: it resumes at step 2 and its checkpoint at step 4 does not fit."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        _command(run, "train.steps=4"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit if file_size_limit else None,
    )


def _room_for(sizes: dict[str, int], fails_in: str) -> int:
    """Bytes of the next checkpoint that fit on the disk: half of its weights, or its weights and half of its
    training state."""
    if fails_in == ckpt.MODEL_FILE:
        return sizes[ckpt.MODEL_FILE] // 2
    return sizes[ckpt.MODEL_FILE] + sizes[ckpt.TRAIN_STATE_FILE] // 2


def _assert_refused_cleanly(result: subprocess.CompletedProcess, run: Path, reason: str) -> None:
    root = run / "checkpoints"
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"openslip train: error: cannot write checkpoint {root / 'step_0000004'} ({reason}); "
        f"the previous checkpoint {root / FIRST} is intact"
    ), last
    assert sorted(p.name for p in root.iterdir()) == ["latest", FIRST]  # no partial step_4, no .tmp-* staging dir
    assert (root / "latest").read_text().strip() == FIRST
    assert ckpt.checkpoint_problem(root / FIRST, verify=True) is None


def _copy(first: tuple[Path, dict[str, int]], dest: Path) -> Path:
    run = dest / "run"
    shutil.copytree(first[0], run)
    return run


@pytest.mark.parametrize("fails_in", [ckpt.MODEL_FILE, ckpt.TRAIN_STATE_FILE])
def test_file_size_limit_during_a_checkpoint_is_one_line(first, tmp_path, fails_in):
    """`ulimit -f`: the write past the limit fails with EFBIG (SIGXFSZ is ignored, so it does not kill the run)."""
    run = _copy(first, tmp_path)
    sizes = first[1]
    # the limit is per file: below the one file, above the weights when the training state is to fail
    small, large = sizes[ckpt.MODEL_FILE], sizes[ckpt.TRAIN_STATE_FILE]
    result = _continue(run, file_size_limit=small // 2 if fails_in == ckpt.MODEL_FILE else (small + large) // 2)
    _assert_refused_cleanly(result, run, os.strerror(27))  # EFBIG: "File too large"


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the given size at a fresh folder (root only; skipped where mounting is not allowed)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / "small"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False, capture_output=True)


@pytest.mark.parametrize("fails_in", [ckpt.MODEL_FILE, ckpt.TRAIN_STATE_FILE])
def test_full_disk_during_a_checkpoint_is_one_line(first, small_disk, fails_in):
    """A real full disk (ENOSPC) on a tmpfs with room for the step-2 checkpoint and part of the next one."""
    page = 4096
    used = sum(-(-p.stat().st_size // page) * page for p in first[0].rglob("*") if p.is_file())
    point = small_disk(used + SLACK + _room_for(first[1], fails_in))
    run = _copy(first, point)
    result = _continue(run)
    _assert_refused_cleanly(result, run, os.strerror(28))  # ENOSPC: "No space left on device"
