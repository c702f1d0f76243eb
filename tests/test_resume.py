"""A run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one; broken newest
checkpoints fall back to the previous one."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_utils import final_weights, overrides

from openslip.overrides import parse_overrides
from openslip.train import train
from openslip.train.recipes import make_config

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
    result = _continue_to_step_6(run)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr and "step_0000002" in result.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000006"


def _continue_to_step_6(run: Path) -> subprocess.CompletedProcess:
    """The run's command again with more steps, in a fresh process (what a user does after a crash)."""
    argv = [sys.executable, "-m", "openslip.cli", "train", *overrides(run, "train.steps=6", "ckpt.every_steps=2")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def _flip_bytes(path: Path, start: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_train_state_is_caught_by_its_checksum_and_the_run_falls_back(tmp_path):
    """2,000 flipped bytes inside the newest train_state.pt leave a zip that still parses: only the
    checksum saved with the checkpoint catches it; resume warns, names the file and uses step 2."""
    run = tmp_path / "run"
    train(make_config(parse_overrides(overrides(run, "train.steps=4", "ckpt.every_steps=2", "ckpt.keep_last=5"))))
    state = run / "checkpoints" / "step_0000004" / "train_state.pt"
    _flip_bytes(state, state.stat().st_size // 3, 2000)
    result = _continue_to_step_6(run)
    assert result.returncode == 0, result.stderr
    assert "step_0000004/train_state.pt: corrupt" in result.stderr and "using step_0000002" in result.stderr
    assert "resumed from" in result.stderr and "step_0000002 at step 2" in result.stderr
    assert all(torch.isfinite(t).all() for t in final_weights(run).values())


def test_loading_a_corrupt_or_non_finite_checkpoint_is_a_one_line_error(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    import openslip
    from openslip.cli import main
    from openslip.errors import CheckpointError

    run = tmp_path / "run"
    train(make_config(parse_overrides(overrides(run, "train.steps=2", "ckpt.every_steps=2"))))
    ckpt = run / "checkpoints" / "step_0000002"
    weights = ckpt / "model.safetensors"
    _flip_bytes(weights, weights.stat().st_size - 4000, 64)  # inside the tensor data: the header still parses
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt"):
        openslip.load_model(ckpt)
    # A file written with NaN (and checksums to match): refused for what it holds.
    sd = load_file(str(_fresh_weights(tmp_path)))
    sd["visual.cls_token"][0, 0, 0] = float("nan")
    save_file(sd, str(weights), metadata={"format": "pt"})
    (ckpt / "checksums.json").unlink()  # as a checkpoint from before checksums
    argv = ["eval", "zeroshot", "--model", str(ckpt), "--dataset", "demo_colours", "-n", "8"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "non-finite values" in err and "visual.cls_token" in err and len(err.splitlines()) == 1


def _fresh_weights(tmp_path: Path) -> Path:
    out = tmp_path / "fresh"
    train(make_config(parse_overrides(overrides(out, "train.steps=1", "ckpt.every_steps=1"))))
    return out / "checkpoints" / "step_0000001" / "model.safetensors"
