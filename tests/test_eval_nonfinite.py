"""Finetuning and the SGD probe stop on a non-finite loss with one line naming the step and what there is to go
back to, instead of training on NaN (as `openslip train` already does)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import openslip.eval.finetune as finetune_module
from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
RANDOM = ["--model", "slip_vit_micro", "--pretrained", "none", "--dataset", "demo_colours", "-n", "16",
          "--num-train", "32"]  # fmt: skip


def _nan_from_call(real, after: int):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > after else loss

    return wrapped


def test_finetune_stops_on_a_non_finite_loss(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(finetune_module, "soft_cross_entropy", _nan_from_call(finetune_module.soft_cross_entropy, 3))
    argv = ["finetune", *RANDOM, "batch_size=16", "epochs=3", "warmup_epochs=0", "--out-dir", str(tmp_path / "ft")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not any(line.startswith("Traceback") for line in err)
    assert "finetuning: non-finite loss nan at step 3" in err[-1]
    assert "the last good state is" in err[-1] and "(epoch 1)" in err[-1]


def test_sgd_probe_stops_on_a_non_finite_loss(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", _nan_from_call(torch.nn.functional.cross_entropy, 1))
    argv = [
        "eval",
        "linear",
        *RANDOM,
        "linear_protocol=sgd",
        "linear_batch_size=16",
        "linear_epochs=2",
        "linear_eval_every=1",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "SGD linear probe: non-finite loss nan at step 1" in err
