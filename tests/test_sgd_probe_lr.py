"""`openslip eval linear linear_protocol=sgd`: the learning rate the probe trains with, as the command reports it.

The paper's probe ran on 8 GPUs with the reference's rate 0.1 x int(128 / 8) / 256 = 0.00625 (its world size
divided twice); `linear_reference_lr_bug=8` gives that rate on any number of processes, and the result records it
(`=0`: as on this run's process count, what the option `--reference-lr-bug` without a value meant).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

PROBE = ["eval", "linear", "linear_protocol=sgd", "--model", "slip_vit_micro", "--pretrained", "none"]
PROBE += ["--image-size", "32", "--dataset", "demo_shapes", "-n", "8", "--num-train", "16", "linear_epochs=1"]


def _lr(tmp_path: Path, capsys, *argv: str) -> float:
    out = tmp_path / "probe.json"
    assert main([*PROBE, *argv, "--output", str(out)]) == 0, capsys.readouterr().err
    lr = json.loads(out.read_text())["lr"]
    assert f"lr {lr:.4g})" in capsys.readouterr().out  # the table's title says it too
    return lr


@pytest.mark.parametrize(
    ("argv", "lr"),
    [
        ([], 0.1 * 1024 / 256),  # openslip's rate: base lr x global batch / 256
        (["linear_reference_lr_bug=8"], 0.1 * (128 // 8) / 256),  # the paper's 8 GPUs, here on one process
        (["linear_reference_lr_bug=0"], 0.1 * 1024 / 256),  # this run's world size (1): nothing divided
        (["linear_reference_lr_bug=4", "linear_batch_size=512", "linear_lr=0.2"], 0.2 * (128 // 4) / 256),
        (["linear_lr=0.0015625"], 0.00625),  # the same rate as a base lr per 256 images
    ],
)
def test_sgd_probe_reports_the_lr_it_trains_with(argv: list[str], lr: float, tmp_path: Path, capsys) -> None:
    assert _lr(tmp_path, capsys, *argv) == pytest.approx(lr)


def test_paper_rate_is_0_00625() -> None:
    from openslip.eval.linear import SGDProbeConfig, sgd_learning_rate

    cfg = SGDProbeConfig(reference_lr_bug=True, reference_world_size=8)
    assert sgd_learning_rate(cfg, 1) == sgd_learning_rate(cfg, 2) == sgd_learning_rate(cfg, 8) == 0.00625


@pytest.mark.parametrize(
    ("value", "message"),
    [("-1", "should be a process count (>= 1), or 0 for this run's"), ("eight", "should be of type int")],
)
def test_bad_reference_world_size_is_a_one_line_error(value: str, message: str, capsys) -> None:
    assert main([*PROBE, f"linear_reference_lr_bug={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "linear_reference_lr_bug=" in err[0] and message in err[0], err


def test_a_batch_too_small_for_the_references_formula_is_refused(capsys) -> None:
    assert main([*PROBE, "linear_reference_lr_bug=8", "linear_batch_size=32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use a global batch of at least 64" in err, err
