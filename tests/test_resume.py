"""A run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one; broken newest
checkpoints fall back to the previous one."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from train_utils import final_weights, overrides

from openslip.config import make_config, parse_overrides
from openslip.train import train

STEPS = 8
EXTRA = (f"train.steps={STEPS}", "ckpt.every_steps=2", "ckpt.keep_last=5")


def _command(out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "openslip.cli", "train", *overrides(out_dir, *EXTRA)]


def _assert_identical(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    ref = tmp_path / "ref"
    train(make_config(parse_overrides(overrides(ref, *EXTRA))))

    run = tmp_path / "killed"
    kill_after = random.Random(os.getpid()).choice([2, 4, 6])  # a checkpoint step to wait for
    proc = subprocess.Popen(_command(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / "checkpoints" / f"step_{kill_after:07d}"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never reached the checkpoint to kill after"

    resumed = subprocess.run(_command(run), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    _assert_identical(final_weights(ref), final_weights(run))


def test_truncated_newest_checkpoint_falls_back(tmp_path):
    run = tmp_path / "run"
    train(make_config(parse_overrides(overrides(run, "train.steps=4", "ckpt.every_steps=2"))))
    newest = run / "checkpoints" / "step_0000004" / "model.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    result = subprocess.run(
        [sys.executable, "-m", "openslip.cli", "train", *overrides(run, "train.steps=6", "ckpt.every_steps=2")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr and "step_0000002" in result.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000006"
