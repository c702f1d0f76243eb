"""A rank that dies makes the others stop with a one-line message instead of hanging."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from train_utils import overrides


@pytest.mark.multiprocess
def test_survivor_exits_with_clear_message(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        sys.executable,
        "-m",
        "openslip.cli",
        "train",
        *overrides(tmp_path, "train.steps=500", "ckpt.every_steps=2"),
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
    try:
        marker = tmp_path / "checkpoints" / "step_0000004"
        deadline = time.monotonic() + 180
        while not marker.exists() and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "training did not reach its second checkpoint"
        procs[1].send_signal(signal.SIGKILL)
        _, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 2
    last = err.strip().splitlines()[-1]
    assert "lost contact with another process" in last and "resume with resume=auto" in last
