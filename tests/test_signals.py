"""Signals as schedulers send them: to the whole process group, loader workers included (`timeout`, `kill -- -PGID`,
SLURM's `scancel`, a terminal's Ctrl-C). The run finishes its step, writes a final checkpoint and prints one line,
on one process and on every rank; a killed loader worker is one line too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_procs import children, finish, kill_all, last_line, start_ranks, start_train, wait_for_step
from train_utils import final_weights

from openslip.weights import checkpoint as ckpt

WORKERS = "data.num_workers=2"


@pytest.fixture
def track():
    """`track(start_train(...))`: whatever still runs when the test ends (a failure) is killed with its group."""
    procs: list[subprocess.Popen] = []

    def add(started):
        procs.extend(started if isinstance(started, list) else [started])
        return started

    yield add
    kill_all(procs)


def _assert_gone(pids: list[int]) -> None:
    """The workers ended with their training process (shut down by it, not left to notice its death)."""
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in pids), "a loader worker outlived the run"


def _stopped_step(line: str, name: str) -> int:
    assert f"stopped by {name} at step" in line, line
    return int(line.split(" at step ")[1].split(";")[0])


def test_sigterm_to_the_process_group_checkpoints_and_resume_is_bit_exact(tmp_path, track):
    steps = ("train.steps=8", "ckpt.every_steps=100", WORKERS)
    ref = tmp_path / "ref"
    uninterrupted = track(start_train(ref, *steps))
    err = finish([uninterrupted])[0]
    assert uninterrupted.returncode == 0, err

    run = tmp_path / "stopped"
    proc = track(start_train(run, *steps))
    wait_for_step(proc, run, 2)
    workers = children(proc.pid)
    assert len(workers) == 2, "the loader's workers are running"
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # the training process and its two workers
    err = finish([proc])[0]
    took = time.monotonic() - sent
    last = last_line(err)
    stopped_at = _stopped_step(last, "SIGTERM")
    print(
        f"\nSIGTERM to the process group (1 process, 2 workers): exit after {took:.2f} s, final checkpoint at step "
        f"{stopped_at}"
    )
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "killed by signal" not in err, err
    name = ckpt.checkpoint_dir_name(stopped_at)
    assert last == (
        f"openslip train: stopped by SIGTERM at step {stopped_at}; checkpoint {run / 'checkpoints' / name} "
        "(run the same command to resume)"
    )
    assert (run / "checkpoints" / "latest").read_text().strip() == name
    assert 2 <= stopped_at < 8
    _assert_gone(workers)

    resumed = track(start_train(run, *steps))
    err = finish([resumed])[0]
    assert resumed.returncode == 0, err
    assert f"resumed from {run / 'checkpoints' / name}" in err
    a, b = final_weights(ref), final_weights(run)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_sigint_to_the_process_group_checkpoints(tmp_path, track):
    """Ctrl-C in a terminal signals the foreground process group: the workers get SIGINT too."""
    run = tmp_path / "run"
    proc = track(start_train(run, "train.steps=200", "ckpt.every_steps=1000", WORKERS))
    wait_for_step(proc, run, 1)
    os.killpg(proc.pid, signal.SIGINT)
    err = finish([proc])[0]
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    stopped_at = _stopped_step(last_line(err), "SIGINT")
    assert (run / "checkpoints" / "latest").read_text().strip() == ckpt.checkpoint_dir_name(stopped_at)


def test_second_sigint_is_one_line(tmp_path, track):
    """Ctrl-C twice, over a second apart: the second stops at once if the step is still running (no checkpoint of
    it), or changes nothing if the run already stopped cleanly. Either way: one line, exit 130, no traceback."""
    run = tmp_path / "run"
    proc = track(start_train(run, "train.steps=200", "ckpt.every_steps=1000", WORKERS))
    wait_for_step(proc, run, 1)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.5)  # more than the window in which a repeated signal counts as the same request
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    err = finish([proc])[0]
    last = last_line(err)
    print(f"\nsecond SIGINT: {last}")
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "stopped by SIGINT at step" in last or (
        "stopped at once by a second SIGINT" in last and "without a final checkpoint" in last
    ), last


def test_killed_loader_worker_is_one_line(tmp_path, track):
    run = tmp_path / "run"
    proc = track(start_train(run, "train.steps=500", "ckpt.every_steps=2", WORKERS))
    wait_for_step(proc, run, 3)
    worker, other = children(proc.pid)
    os.kill(worker, signal.SIGKILL)
    err = finish([proc])[0]
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    last = last_line(err)
    assert last.startswith(
        f"openslip train: error: data loader worker (pid {worker}) was killed by signal SIGKILL (out of memory?); "
        f"resume with resume=auto from {run / 'checkpoints'}"
    ), last
    _assert_gone([other])


# A script that iterates the loader itself and fails while the batches are still open (the traceback keeps them).
OPEN_AT_ERROR = """
import multiprocessing
import torch
from openslip.train.data import build_train_data
from openslip.train.recipes import make_config

data = {"num_workers": 2, "augment": "AUGMENT"}
cfg = make_config({"model": "slip_vit_micro", "data": data, "train": {"batch_size": 4}})
data = build_train_data(cfg, 32, ("image", "view1", "view2"), True, 0, 1, torch.device("cpu"))
batches = data.loader.forever()
data.views(next(batches), 0, torch.device("cpu"))
print("workers", *[p.pid for p in multiprocessing.active_children()], flush=True)
raise RuntimeError("the consumer failed")
"""


@pytest.mark.parametrize("augment", ["device", "cpu"])
def test_a_consumer_that_fails_with_the_workers_running_still_exits(augment, track):
    """The workers ignore SIGTERM; at the interpreter's exit multiprocessing ends them with it and waits for them,
    so without openslip's exit hook (workers.track_workers) this process waited forever."""
    proc = track(
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT_ERROR.replace("AUGMENT", augment)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit")
    assert proc.returncode == 1 and err.strip().endswith("RuntimeError: the consumer failed"), err
    workers = [int(pid) for pid in out.split()[1:]]
    assert len(workers) == 2, out
    _assert_gone(workers)


@pytest.mark.multiprocess
def test_sigterm_to_the_process_group_stops_both_ranks_at_the_same_step(tmp_path, track):
    procs = track(start_ranks(tmp_path, "train.steps=500", "ckpt.every_steps=100", WORKERS))
    wait_for_step(procs[0], tmp_path, 2)
    assert all(len(children(p.pid)) == 2 for p in procs), "each rank's workers are running"
    sent = time.monotonic()
    os.killpg(procs[0].pid, signal.SIGTERM)  # both ranks and their four workers
    errs = finish(procs)
    took = time.monotonic() - sent
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, errs
    assert not any("Traceback" in e for e in errs), errs
    lasts = [last_line(e) for e in errs]
    assert lasts[0] == lasts[1], lasts
    step = _stopped_step(lasts[0], "SIGTERM")
    print(
        f"\nSIGTERM to the process group (2 gloo ranks, 2 workers each): exit after {took:.2f} s, final "
        f"checkpoint at step {step}"
    )
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == ckpt.checkpoint_dir_name(step)
