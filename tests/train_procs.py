"""`openslip train` as separate processes, the way a scheduler runs it: one process or several gloo ranks (the
torchrun environment set by hand), all in one process group of their own so that a test can signal the group
(`os.killpg`) as `timeout`, `kill -- -PGID` and SLURM's `scancel` do."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from train_utils import overrides

# one intra-op thread in every process: micro runs on a shared CPU, the same float order everywhere
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def train_command(out_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "openslip.cli", "train", *overrides(out_dir, *extra)]


def start_train(out_dir: Path, *extra: str) -> subprocess.Popen:
    """One training process, leader of a new process group (its loader workers join that group)."""
    return subprocess.Popen(
        train_command(out_dir, *extra),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
    )


def start_ranks(out_dir: Path, *extra: str, ranks: tuple[int, ...] = (0, 1), world_size: int = 2) -> list:
    """The ranks `ranks` of a `world_size`-process gloo run, in one new process group led by the first one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs: list[subprocess.Popen] = []
    for rank in ranks:
        env = dict(
            ENV,
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        group = procs[0].pid if procs else 0
        procs.append(
            subprocess.Popen(
                train_command(out_dir, *extra),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                process_group=group,
            )
        )
    return procs


def logged_step(out_dir: Path) -> int:
    try:
        lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines if line.strip().endswith("}")]
    return max(steps, default=0)


def wait_for_step(proc: subprocess.Popen, out_dir: Path, step: int, limit_s: float = 240) -> None:
    deadline = time.monotonic() + limit_s
    while logged_step(out_dir) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged_step(out_dir) >= step, f"the run never logged step {step}"


def children(pid: int) -> list[int]:
    """The child processes of `pid` (its loader workers), from Linux's /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def finish(procs: list[subprocess.Popen], limit_s: float = 180) -> list[str]:
    """Each process's stderr once it ended; a process still running after `limit_s` (a hang) is killed and the
    wait fails."""
    try:
        return [p.communicate(timeout=limit_s)[1] for p in procs]
    finally:
        kill_all(procs)


def kill_all(procs: list[subprocess.Popen]) -> None:
    """SIGKILL to the process group of each process still running (the groups this module made: workers too)."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(p.pid), signal.SIGKILL)
            p.wait()


def last_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    return lines[-1]
