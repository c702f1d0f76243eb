"""A checksum failure never leads to an overwrite: a run whose checkpoints all fail their checksums (or are all
broken) is refused in one line and left byte-identical; resume_force=true trusts the weights; the settings check
runs whichever checkpoint is used; a weights file loaded by its path is checked against its checksums.json."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from train_utils import overrides

import openslip
from openslip.cli import main
from openslip.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")  # micro runs on a shared 2-core CPU (conftest.py)

TRAIN = ("train.steps=4", "ckpt.every_steps=2", "ckpt.keep_last=5")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4; tests work on copies of it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *overrides(run, *TRAIN)]) == 0
    return run


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run but the lock (which holds the pid of the last run)."""
    return {
        str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("openslip "), err
    return err[0]


def _checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("step_*"))


def test_a_rerun_over_damaged_checksums_refuses_and_changes_nothing(run, capsys):
    """The attack: checksums.json truncated in one checkpoint and garbled in the other, then the same command again.
    Before, the run started from step 0 and overwrote config.yaml, metrics.jsonl and the intact checkpoints."""
    newest, older = _checkpoints(run)[::-1]
    text = (newest / "checksums.json").read_text()
    (newest / "checksums.json").write_text(text[: len(text) // 3])
    (older / "checksums.json").write_text(text.replace("a", "b").replace("0", "1"))  # parses, every hash wrong
    before = _snapshot(run)
    err = _one_line_error(capsys, ["train", *overrides(run, *TRAIN)])
    assert "cannot resume" in err and "checksums" in err, err
    assert str(newest / "checksums.json") in err and "resume_force=true" in err and "new out_dir" in err, err
    assert _snapshot(run) == before
    # a longer run is refused the same way
    _one_line_error(capsys, ["train", *overrides(run, "train.steps=6", *TRAIN[1:])])
    assert _snapshot(run) == before

    # resume_force=true trusts the newest weights whose files parse, says so, and continues from its step
    capsys.readouterr()
    assert main(["train", *overrides(run, "train.steps=6", *TRAIN[1:], "resume_force=true")]) == 0
    err = capsys.readouterr().err
    assert "warning: resume_force=true: resuming from" in err and "checksums do not match" in err, err
    assert f"resumed from {newest} at step 4" in err, err
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000006"


def test_checkpoints_that_are_all_broken_are_never_trained_over(run, capsys):
    """Truncated weights in every checkpoint: nothing to resume from, and still no start from step 0 on top of the
    run's history; resume_force=true cannot trust files that do not parse either."""
    for ckpt in _checkpoints(run):
        weights = ckpt / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    before = _snapshot(run)
    for force in ("false", "true"):
        err = _one_line_error(capsys, ["train", *overrides(run, *TRAIN, f"resume_force={force}")])
        assert "cannot resume" in err and "is complete" in err and "new out_dir" in err, err
        assert "model.safetensors" in err, err
        assert _snapshot(run) == before


def test_the_settings_check_runs_on_the_checkpoint_resumed_from(run, capsys):
    """With the newest checkpoint's checksums broken the run falls back to the older one, and with all of them
    broken resume_force=true trusts the newest: in both cases a changed setting is compared, not skipped."""
    newest, older = _checkpoints(run)[::-1]
    (newest / "checksums.json").write_text("{")
    before = _snapshot(run)
    err = _one_line_error(capsys, ["train", *overrides(run, *TRAIN, "seed=7")])
    assert f"checkpoint {older} was trained with other settings (seed 0 -> 7)" in err, err
    assert _snapshot(run) == before
    (older / "checksums.json").write_text("{")
    capsys.readouterr()
    assert main(["train", *overrides(run, *TRAIN, "seed=7", "resume_force=true")]) == 0
    err = capsys.readouterr().err
    assert f"continuing {newest} with changed settings: seed 0 -> 7" in err, err


def test_a_run_stopped_before_its_first_checkpoint_starts_over(run, capsys):
    """metrics.jsonl but no checkpoint directory (a run killed before its first save): nothing to resume, and a
    rerun trains from step 0 as before, keeping one record per step."""
    shutil.rmtree(run / "checkpoints")
    capsys.readouterr()
    assert main(["train", *overrides(run, "train.steps=2", "ckpt.every_steps=2")]) == 0
    assert "resumed" not in capsys.readouterr().err
    steps = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(steps) == 2


def test_weights_loaded_by_their_path_are_checked_against_their_checksums(run, capsys, tmp_path):
    """`load_model(".../step_N/model.safetensors")` used to skip the checksums, and export then wrote a copy whose
    own checksums passed."""
    ckpt = _checkpoints(run)[-1]
    weights = ckpt / "model.safetensors"
    openslip.load_model(weights)  # intact: loads
    data = bytearray(weights.read_bytes())
    data[-4000] ^= 0xFF  # inside the tensor data: the header still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt"):
        openslip.load_model(weights)
    err = _one_line_error(capsys, ["eval", "zeroshot", "--model", str(weights), "--dataset", "demo_colours", "-n", "8"])
    assert "model.safetensors: corrupt" in err, err
    out = tmp_path / "exported"
    err = _one_line_error(capsys, ["export", str(weights), str(out), "--format", "hf"])
    assert "model.safetensors: corrupt" in err and not out.exists(), err
