"""A rank that dies makes the others stop with a one-line message instead of hanging."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from train_utils import overrides


def _start_ranks(out_dir, *extra: str) -> list[subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        sys.executable,
        "-m",
        "openslip.cli",
        "train",
        *overrides(out_dir, "train.steps=500", "ckpt.every_steps=2", *extra),
    ]
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_for_checkpoint(out_dir, first: subprocess.Popen) -> None:
    marker = out_dir / "checkpoints" / "step_0000004"
    deadline = time.monotonic() + 180
    while not marker.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "training did not reach its second checkpoint"


@pytest.mark.multiprocess
def test_survivor_exits_with_clear_message(tmp_path):
    procs = _start_ranks(tmp_path)
    try:
        _wait_for_checkpoint(tmp_path, procs[0])
        procs[1].send_signal(signal.SIGKILL)
        _, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 2
    last = err.strip().splitlines()[-1]
    assert "lost contact with another process" in last and "resume with resume=auto" in last


@pytest.mark.multiprocess
def test_stuck_rank_makes_survivor_exit_after_collective_timeout(tmp_path):
    """A rank that is alive but silent (SIGSTOP: a hung filesystem, a stuck driver) makes the others stop
    after train.collective_timeout_s, with the same message as a dead rank."""
    timeout_s = 10
    procs = _start_ranks(tmp_path, f"train.collective_timeout_s={timeout_s}")
    try:
        _wait_for_checkpoint(tmp_path, procs[0])
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = procs[0].communicate(timeout=timeout_s + 110)  # generous: only catches a hang
        took = time.monotonic() - stopped
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL also ends a stopped process
            p.wait()
    print(f"\nsurvivor exited {took:.1f} s after SIGSTOP of its peer (timeout {timeout_s} s)")
    assert procs[0].returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert "lost contact with another process" in last and "resume with resume=auto" in last


@pytest.mark.multiprocess
def test_sigterm_to_one_rank_stops_all_at_the_same_step(tmp_path):
    """torchrun forwards SIGTERM to every rank, but a signal that reaches one rank only must stop them all
    after the same step (the stop flag is all-reduced), with one checkpoint to resume from."""
    procs = _start_ranks(tmp_path)
    try:
        _wait_for_checkpoint(tmp_path, procs[0])
        procs[1].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, errs
    lasts = [e.strip().splitlines()[-1] for e in errs]
    assert lasts[0] == lasts[1] and "stopped by SIGTERM at step" in lasts[0], lasts
    step = int(lasts[0].split(" at step ")[1].split(";")[0])
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{step:07d}"
