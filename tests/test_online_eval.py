"""Evaluations by name during training: `eval.knn` and `eval.linear` probe sets next to zero-shot, for every
objective (SimCLR included), logged to metrics.jsonl with their chance level; bad sets fail before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["train.batch_size=8", "data.num_workers=0", "data.image_size=32", "optim.warmup_steps=1",
         "train.steps=2", "eval.samples=32", "eval.train_samples=64", "eval.every_steps=1"]  # fmt: skip


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_simclr_run_is_probed_every_evaluation(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    argv = ["train", "model=simclr_vit_micro", "loss.clip_scale=0", *SMALL, "eval.zeroshot=[]",
            "eval.knn=[demo_shapes]", "eval.linear=[demo_colours]", f"out_dir={run}"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    evals = [r for r in _records(run) if "knn/demo_shapes" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(0 <= r["knn/demo_shapes"] <= 100 and 0 <= r["linear/demo_colours"] <= 100 for r in evals)
    assert evals[-1]["chance"] == {"knn/demo_shapes": 12.5, "linear/demo_colours": 12.5}
    assert "step 2: knn/demo_shapes" in capsys.readouterr().err


def test_probe_on_image_folders_next_to_zero_shot(tmp_path: Path, capsys) -> None:
    for split, n in (("test", 3), ("train", 6)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng(i)
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i}.png"
                )
    run = tmp_path / "run"
    argv = ["train", "model=slip_vit_micro", *SMALL, "eval.zeroshot=[demo_colours]",
            f"eval.knn=[{tmp_path / 'test'}@{tmp_path / 'train'}]", f"out_dir={run}"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    last = [r for r in _records(run) if "knn/test" in r][-1]
    assert "zeroshot/demo_colours" in last and last["chance"]["knn/test"] == 50.0


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("eval.knn=[/no/such/folder]", "eval.knn: /no/such/folder: neither a demo task"),
        ("eval.linear=[demo]", "eval.linear: 'demo': a probe needs a labelled set with a train split"),
        ("eval.train_samples=0", "eval.train_samples=0 must be > 0"),
    ],
)
def test_bad_probe_sets_fail_before_training(setting: str, message: str, tmp_path: Path, capsys) -> None:
    small = [s for s in SMALL if s.partition("=")[0] != setting.partition("=")[0]]  # a key given twice is refused
    assert main(["train", "model=slip_vit_micro", *small, setting, f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
