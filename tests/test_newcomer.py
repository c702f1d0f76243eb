"""What a newcomer hit (issue: "What we ship tells the truth", item 7) and the threads / progress settings (item 5):
each case through the CLI or the public API, the way a user meets it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from openslip.cli import main
from tests.train_utils import overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(tmp_path: Path, *extra: str) -> int:
    return main(["train", *overrides(tmp_path / "run", "train.steps=3", *extra)])


# --- threads and progress ----------------------------------------------------------------------------------------


def test_train_threads_sets_torch_threads(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OPENSLIP_NO_TUNE", "1")  # train.threads applies even when the runtime tuning is off
    torch.set_num_threads(2)
    assert _train(tmp_path, "train.threads=1") == 0
    assert torch.get_num_threads() == 1


def test_train_threads_is_checked():
    assert main(["train", "train.threads=-1"]) == 2


def test_load_above_the_cores_warns_in_one_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(os, "getloadavg", lambda: (1000.0, 0.0, 0.0))
    assert _train(tmp_path) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "1-minute load" in x]
    assert len(lines) == 1 and "train.threads=1" in lines[0], lines


def test_progress_prints_by_time_as_well_as_by_steps(tmp_path: Path, capsys):
    # print_every=100 steps: by steps only the last step would print; a tiny interval prints at every step
    assert _train(tmp_path, "train.log_every=100", "train.print_every=100", "train.print_every_s=1e-9") == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("step ") and "/3 (" in x]
    assert [x.split()[1] for x in lines] == ["1/3", "2/3", "3/3"], lines


def test_progress_by_time_uses_the_clock(tmp_path: Path, capsys):
    from openslip.run_log import RunLogger

    now = [0.0]
    log = RunLogger(tmp_path, enabled=True, total_steps=100, start_step=0, progress=False, clock=lambda: now[0])
    log.progress(1, {"loss": 1.0})
    now[0] = 31.0
    log.progress(2, {"loss": 1.0})
    log.progress(3, {"loss": 1.0})  # no time passed since the last line, and not a tenth of the run
    log.close()
    assert [x.split()[1] for x in capsys.readouterr().err.splitlines()] == ["2/100"]


def test_compare_passes_train_threads_through():
    from openslip.compare.experiment import CompareConfig
    from openslip.compare.methods import METHODS

    exp = CompareConfig(methods=("clip", "slip"), overrides=("train.threads=1",))
    for name in exp.methods:
        assert exp.run_config(METHODS.get(name), 0).train.threads == 1


# --- silent cases ------------------------------------------------------------------------------------------------


def test_start_line_shows_the_data_and_its_size(tmp_path: Path, capsys):
    assert _train(tmp_path, "data.demo_size=640") == 0
    start = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("training "))
    assert "data demo (640 samples)" in start, start


def test_warmup_longer_than_the_run_warns(tmp_path: Path, capsys):
    assert _train(tmp_path, "optim.warmup_steps=30") == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "optim.warmup_steps=30" in x]
    assert len(lines) == 1 and "never reaches" in lines[0], lines
