"""A rank that dies makes the others stop with a one-line message instead of hanging or a traceback."""

import os
import signal
import time

import pytest
from train_procs import finish, kill_all, last_line, start_ranks


def _wait_for_checkpoint(out_dir, first) -> None:
    marker = out_dir / "checkpoints" / "step_0000004"
    deadline = time.monotonic() + 180
    while not marker.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "training did not reach its second checkpoint"


def _assert_lost_contact(err: str, rank: int) -> None:
    assert "Traceback" not in err, err
    last = last_line(err)
    assert last.startswith(f"openslip train: error: rank {rank}: lost contact with another process"), last
    assert "resume with resume=auto" in last, last


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("victim", "as_torchrun"), [(1, False), (0, False), (1, True)], ids=["rank1", "rank0", "rank1-torchrun"]
)
def test_survivor_exits_with_clear_message(tmp_path, victim, as_torchrun):
    """SIGKILL of either rank (rank 0 also hosts the rendezvous store) while both use loader workers. torchrun
    then also sends SIGTERM to the survivor's process group (its loader workers included)."""
    procs = start_ranks(tmp_path, "train.steps=500", "ckpt.every_steps=2", "data.num_workers=2")
    survivor = 1 - victim
    try:
        _wait_for_checkpoint(tmp_path, procs[0])
        procs[victim].send_signal(signal.SIGKILL)
        if as_torchrun:
            os.killpg(os.getpgid(procs[survivor].pid), signal.SIGTERM)
        errs = finish(procs)
    finally:
        kill_all(procs)
    assert procs[survivor].returncode == 2, errs[survivor]
    _assert_lost_contact(errs[survivor], survivor)


@pytest.mark.multiprocess
@pytest.mark.parametrize("alone", [0, 1])
def test_peer_that_never_joins_is_one_line(tmp_path, alone):
    """A peer that died before joining the process group (killed at start-up, or never started): the rank that
    came waits train.collective_timeout_s for it, then stops with the same line. Rank 0 waits for clients on its
    store; another rank waits for rank 0's store."""
    timeout_s = 5
    (proc,) = start_ranks(tmp_path, "train.steps=5", f"train.collective_timeout_s={timeout_s}", ranks=(alone,))
    err = finish([proc])[0]
    assert proc.returncode == 2, err
    _assert_lost_contact(err, alone)


@pytest.mark.multiprocess
def test_stuck_rank_makes_survivor_exit_after_collective_timeout(tmp_path):
    """A rank that is alive but silent (SIGSTOP: a hung filesystem, a stuck driver) makes the others stop
    after train.collective_timeout_s, with the same message as a dead rank."""
    timeout_s = 10
    procs = start_ranks(tmp_path, "train.steps=500", "ckpt.every_steps=2", f"train.collective_timeout_s={timeout_s}")
    try:
        _wait_for_checkpoint(tmp_path, procs[0])
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        err = finish(procs[:1], limit_s=timeout_s + 110)[0]  # generous: only catches a hang
        took = time.monotonic() - stopped
    finally:
        kill_all(procs)  # SIGKILL also ends a stopped process
    print(f"\nsurvivor exited {took:.1f} s after SIGSTOP of its peer (timeout {timeout_s} s)")
    assert procs[0].returncode == 2, err
    _assert_lost_contact(err, 0)


@pytest.mark.multiprocess
def test_sigterm_to_one_rank_stops_all_at_the_same_step(tmp_path):
    """torchrun forwards SIGTERM to every rank, but a signal that reaches one rank only must stop them all
    after the same step (the stop flag is all-reduced), with one checkpoint to resume from."""
    procs = start_ranks(tmp_path, "train.steps=500", "ckpt.every_steps=2")
    try:
        _wait_for_checkpoint(tmp_path, procs[0])
        procs[1].send_signal(signal.SIGTERM)
        errs = finish(procs)
    finally:
        kill_all(procs)
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, errs
    lasts = [last_line(e) for e in errs]
    assert lasts[0] == lasts[1] and "stopped by SIGTERM at step" in lasts[0], lasts
    step = int(lasts[0].split(" at step ")[1].split(";")[0])
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{step:07d}"
