"""What `openslip train` prints and records: plain progress lines when output is not a terminal (or the bar is
off), and one metrics.jsonl record per step after an interrupted run is resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["model=slip_vit_micro", "train.batch_size=8", "data.num_workers=0", "data.image_size=32", "eval.sets=[]",
         "optim.warmup_steps=1", "train.log_every=1"]  # fmt: skip


def _progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("step ") and "/" in line.split()[1]]


@pytest.mark.parametrize("bar", ["true", "false"])
def test_plain_progress_lines_when_output_is_not_a_terminal(bar: str, tmp_path: Path, capsys) -> None:
    argv = ["train", *SMALL, "train.steps=6", "train.print_every=2", f"train.progress={bar}", f"out_dir={tmp_path}"]
    assert main(argv) == 0
    err = capsys.readouterr().err  # captured: not a terminal, so no bar even when train.progress=true
    assert "\r" not in err
    lines = _progress_lines(err)
    assert [line.split(" | ")[0] for line in lines] == ["step 2/6 (33%)", "step 4/6 (67%)", "step 6/6 (100%)"]
    assert all("loss " in line and "samples/s" in line and "lr " in line for line in lines)
    assert "ETA" in lines[0] and "ETA" not in lines[-1]


def test_default_prints_about_ten_lines(tmp_path: Path, capsys) -> None:
    assert main(["train", *SMALL, "train.steps=20", f"out_dir={tmp_path}"]) == 0
    assert len(_progress_lines(capsys.readouterr().err)) == 10


def _train_steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def test_resumed_run_keeps_one_record_per_step(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", *SMALL, "train.steps=2", "ckpt.every_steps=2", f"out_dir={run}"]) == 0
    # what an attempt killed after its checkpoint at step 2 leaves: records of steps 3-4, the last cut short
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 9.0}) + "\n" + '{"step": 4, "lo')
    assert main(["train", *SMALL, "train.steps=4", "ckpt.every_steps=2", f"out_dir={run}"]) == 0
    assert _train_steps(run) == [1, 2, 3, 4]
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    assert "resumed from" in capsys.readouterr().err


def test_bad_print_every_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["train", *SMALL, "train.print_every=-1", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.print_every=-1 must be >= 0" in err
