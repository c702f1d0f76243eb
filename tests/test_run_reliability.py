"""What a run does around its training steps, through the CLI: one run per out_dir (a lock), a resume that
refuses another run's checkpoint, a final checkpoint on SIGTERM / SIGINT, and one-line errors for an
unusable out_dir or a full disk."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_procs import wait_for_step
from train_utils import final_weights, overrides

from openslip.cli import main
from openslip.weights import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")  # micro runs on a shared 2-core CPU (conftest.py)


def _command(out_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "openslip.cli", "train", *overrides(out_dir, *extra)]


# one intra-op thread in every process, as in the in-process runs (one_thread): the same float order everywhere
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _start(out_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = _command(out_dir, *extra)
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(out_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(out_dir, *extra), env=ENV, capture_output=True, text=True, timeout=300)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no message on stderr"
    return err[-1]


# --- one run per out_dir ------------------------------------------------------------------------------------


def test_second_run_on_same_out_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    first = _start(run, "train.steps=60", "ckpt.every_steps=100")  # ~15 s here, the second is refused in ~4
    try:
        wait_for_step(first, run, 1)
        second = _run(run, "train.steps=60")
        overlapped = first.poll() is None
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert overlapped, "the first run ended before the second started: lengthen it"
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert str(run) in lines[0] and f"pid {first.pid}" in lines[0] and "in use" in lines[0]
    assert first.returncode == 0, err
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000060"


def test_sigkilled_run_does_not_block_the_next(tmp_path):
    run = tmp_path / "run"
    # with a loader worker, which outlives the killed trainer for a moment and must not hold the lock
    proc = _start(run, "train.steps=6", "ckpt.every_steps=2", "data.num_workers=1")
    try:
        marker = run / "checkpoints" / "step_0000002"
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker.exists()
    assert (run / ".lock").exists()  # left behind by the killed run; its lock died with it
    resumed = _run(run, "train.steps=6", "ckpt.every_steps=2")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr


# --- resume refuses another run's checkpoint ----------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cfgcheck") / "run"
    assert main(["train", *overrides(run, "train.steps=2")]) == 0
    return run


@pytest.mark.parametrize(
    "changes,keys",
    [
        (["seed=1"], ["seed"]),
        (["optim.lr=1e-3"], ["optim.lr"]),
        (["model=clip_vit_micro", "loss.ssl_scale=0"], ["model", "loss.ssl_scale"]),
    ],
)
def test_resume_refuses_other_settings(finished_run, tmp_path, capsys, changes, keys):
    run = tmp_path / "run"

    shutil.copytree(finished_run, run)
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", *overrides(run, "train.steps=3", *changes)]) == 2
    line = _error_line(capsys)
    assert all(f"{k} " in line for k in keys), line
    assert "resume_force=true" in line
    assert (run / "config.yaml").read_text() == before  # the refused run did not rewrite the run's config
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"


def test_resume_accepts_more_steps_and_forced_changes(finished_run, tmp_path, capsys):

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    capsys.readouterr()
    assert main(["train", *overrides(run, "train.steps=3")]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert main(["train", *overrides(run, "train.steps=4", "seed=1", "resume_force=true")]) == 0
    err = capsys.readouterr().err
    assert "warning: resume_force=true" in err and "seed 0 -> 1" in err
    assert "resumed from" in err
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 1
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000004"


# --- SIGTERM / SIGINT -------------------------------------------------------------------------------------


def test_sigterm_checkpoints_and_resume_is_bit_exact(tmp_path):
    steps = ("train.steps=8", "ckpt.every_steps=100")
    ref = tmp_path / "ref"
    assert main(["train", *overrides(ref, *steps)]) == 0

    run = tmp_path / "stopped"
    proc = _start(run, *steps)
    try:
        wait_for_step(proc, run, 2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    last = err.strip().splitlines()[-1]
    print(f"\nSIGTERM to exit: {took:.2f} s; {last}")
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped_at = int(last.split(" at step ")[1].split(";")[0])
    name = ckpt.checkpoint_dir_name(stopped_at)
    assert 2 <= stopped_at < 8
    assert last == (
        f"openslip train: stopped by SIGTERM at step {stopped_at}; checkpoint {run / 'checkpoints' / name} "
        "(run the same command to resume)"
    )
    assert ckpt.find_latest_checkpoint(run).name == name

    resumed = _run(run, *steps)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'checkpoints' / name}" in resumed.stderr
    a, b = final_weights(ref), final_weights(run)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_sigint_stops_with_checkpoint_and_code_130(tmp_path):
    run = tmp_path / "run"
    proc = _start(run, "train.steps=50", "ckpt.every_steps=100")
    try:
        wait_for_step(proc, run, 1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped by SIGINT at step" in err.strip().splitlines()[-1]
    assert ckpt.find_latest_checkpoint(run) is not None


# --- one-line errors ------------------------------------------------------------------------------------------


def _assert_one_line_error(capsys, argv: list[str], *needles: str, alone: bool = True) -> None:
    """The run ends with exit code 2 and one error line (the only output when it stops before training)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("openslip train: error:"), err
    assert len(err) == 1 or not alone, err
    assert all(n in err[-1] for n in needles), err[-1]


def test_out_dir_under_proc_is_one_line(capsys):
    _assert_one_line_error(capsys, ["train", *overrides("/proc/openslip_run")], "/proc/openslip_run")


def test_out_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a directory")
    _assert_one_line_error(capsys, ["train", *overrides(target)], str(target), "not a directory")
    _assert_one_line_error(capsys, ["train", *overrides(target / "run")], str(target / "run"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; /proc and files cover it")
def test_read_only_out_dir_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _assert_one_line_error(capsys, ["train", *overrides(ro / "run")], str(ro / "run"))
    finally:
        ro.chmod(0o755)


def test_disk_full_during_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real = ckpt._write_train_state
    calls = []

    def full_disk(path, state):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, state)

    monkeypatch.setattr(ckpt, "_write_train_state", full_disk)
    _assert_one_line_error(
        capsys,
        ["train", *overrides(run, "train.steps=4", "ckpt.every_steps=2")],
        f"cannot write checkpoint {run / 'checkpoints' / 'step_0000004'}",
        "No space left on device",
        f"the previous checkpoint {run / 'checkpoints' / 'step_0000002'} is intact",
        alone=False,
    )
    # nothing half-written: the previous checkpoint is the newest and the only entry
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000002"]
    assert ckpt.find_latest_checkpoint(run).name == "step_0000002"
    monkeypatch.setattr(ckpt, "_write_train_state", real)
    capsys.readouterr()
    assert main(["train", *overrides(run, "train.steps=4", "ckpt.every_steps=2")]) == 0
    assert "resumed from" in capsys.readouterr().err


def test_changed_settings_compares_what_trains_only():
    from openslip.train.recipes import make_config
    from openslip.train.rundir import changed_settings as _changed_settings

    saved = make_config().to_dict()
    new = make_config({"train": {"steps": 9, "log_every": 3}, "ckpt": {"keep_last": 9}, "eval": {"sets": []}})
    assert _changed_settings(saved, new.to_dict()) == []
    new = make_config({"seed": 3, "optim": {"betas": [0.9, 0.95]}, "data": {"num_workers": 0}})
    assert _changed_settings(saved, new.to_dict()) == ["seed 0 -> 3", "optim.betas [0.9, 0.98] -> [0.9, 0.95]"]
    del saved["seed"]  # a key an older checkpoint does not have is not compared
    assert _changed_settings(saved, new.to_dict()) == ["optim.betas [0.9, 0.98] -> [0.9, 0.95]"]
    assert _changed_settings(None, new.to_dict()) == []  # an exported model carries no run settings
