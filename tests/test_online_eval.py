"""Evaluations by name during training: `eval.sets` of EVALNAME:SET (zero-shot, the kNN and linear probes, retrieval)
through `openslip.eval.suite.EVALS`, for every objective (SimCLR included), logged to metrics.jsonl with their chance
level; bad sets, names and the keys eval.sets replaced fail before training in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openslip.cli import main
from openslip.overrides import parse_overrides
from openslip.train.recipes import make_config
from openslip.train.rundir import changed_settings

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["train.batch_size=8", "data.num_workers=0", "data.image_size=32", "optim.warmup_steps=1",
         "train.steps=2", "eval.samples=32", "eval.train_samples=64", "eval.every_steps=1"]  # fmt: skip


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_simclr_run_is_probed_every_evaluation(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    argv = ["train", "model=simclr_vit_micro", "loss.clip_scale=0", *SMALL,
            "eval.sets=[knn:demo_shapes,linear:demo_colours]", f"out_dir={run}"]  # fmt: skip
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
    sets = f"eval.sets=[zeroshot:demo_colours,knn:{tmp_path / 'test'}@{tmp_path / 'train'}]"
    argv = ["train", "model=slip_vit_micro", *SMALL, sets, f"out_dir={run}"]
    assert main(argv) == 0, capsys.readouterr().err
    last = [r for r in _records(run) if "knn/test" in r][-1]
    assert "zeroshot/demo_colours" in last and last["chance"]["knn/test"] == 50.0


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("eval.sets=[knn:/no/such/folder]", "eval.sets: 'knn:/no/such/folder': /no/such/folder: neither a demo task"),
        (
            "eval.sets=[linear:demo]",
            "eval.sets: 'linear:demo': linear does not apply: linear reads classification sets",
        ),
        (
            "eval.sets=[demo_shapes]",
            "eval.sets: 'demo_shapes' should be EVALNAME:SET with EVALNAME one of fewshot, knn, linear",
        ),
        ("eval.sets=[knm:demo_shapes]", "eval.sets: 'knm:demo_shapes' should be EVALNAME:SET"),
        ("eval.sets=[finetune:demo_shapes]", "eval.sets: 'finetune:demo_shapes': finetune is not run during training"),
        ("eval.sets=[knn:/no/such/test@demo_shapes]", "eval.sets: 'knn:/no/such/test@demo_shapes': /no/such/test:"),
        ("eval.sets=[knn:demo_shapes,knn:demo_shapes@demo_shapes]", "both report knn/demo_shapes: keep one"),
        ("eval.train_samples=0", "eval.train_samples=0 must be > 0"),
    ],
)
def test_bad_probe_sets_fail_before_training(setting: str, message: str, tmp_path: Path, capsys) -> None:
    small = [s for s in SMALL if s.partition("=")[0] != setting.partition("=")[0]]  # a key given twice is refused
    assert main(["train", "model=slip_vit_micro", *small, setting, f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_every_evaluation_runs_through_eval_sets(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    sets = "eval.sets=[zeroshot:demo_shapes,knn:demo_shapes,linear:demo_colours,retrieval:demo]"
    assert main(["train", "model=slip_vit_micro", *SMALL, sets, f"out_dir={run}"]) == 0, capsys.readouterr().err
    last = [r for r in _records(run) if "chance" in r][-1]
    keys = ("zeroshot/demo_shapes", "knn/demo_shapes", "linear/demo_colours", "retrieval/demo_retrieval")
    assert all(0 <= last[k] <= 100 for k in keys), last
    assert list(last["chance"]) == list(keys[:3])  # a retrieval recall has no class count to guess among
    assert "step 2: zeroshot/demo_shapes" in capsys.readouterr().err


def test_simclr_skips_zero_shot_sets_in_one_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    sets = "eval.sets=[zeroshot:demo_shapes,knn:demo_shapes]"
    assert main(["train", "model=simclr_vit_micro", *SMALL, sets, f"out_dir={run}"]) == 0
    assert "zero-shot evaluation skipped: simclr_vit_micro has no text tower" in capsys.readouterr().err
    assert [k for k in _records(run)[-1]["chance"]] == ["knn/demo_shapes"]


@pytest.mark.parametrize(
    ("settings", "message", "sets"),
    [
        (["eval.zeroshot=[demo_shapes]"], "eval.zeroshot was replaced by eval.sets, a list of EVALNAME:SET: write "
         "eval.sets=[zeroshot:demo_shapes]", ["zeroshot:demo_shapes"]),
        (["eval.knn=[demo_shapes]", "eval.linear=[/d/val@/d/train]"], "eval.knn, eval.linear were replaced by "
         "eval.sets, a list of EVALNAME:SET: remove them and write eval.sets=[knn:demo_shapes,linear:/d/val@/d/train]",
         ["knn:demo_shapes", "linear:/d/val@/d/train"]),
        (["eval.zeroshot=[/d/val]", "eval.catalog=imagenet"], "write eval.sets=[zeroshot:imagenet:/d/val]",
         ["zeroshot:imagenet:/d/val"]),
        (["eval.zeroshot=[]"], "write eval.sets=[]", []),
    ],
)  # fmt: skip
def test_replaced_keys_are_read_as_eval_sets_with_a_warning_naming_it(settings, message, sets) -> None:
    with pytest.warns(FutureWarning, match=re.escape(message)):
        cfg = make_config(parse_overrides(["model=slip_vit_micro", *settings]))
    assert cfg.eval.sets == sets


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["eval.classnames=/d/names.txt"], "class names and templates come with a set: TEST#PROMPTS.json"),
        (["eval.catalog=imagenet"], "a catalog entry goes before its set: eval.sets=[zeroshot:imagenet:PATH]"),
        (["eval.zeroshot=[demo_shapes]", "eval.sets=[knn:demo_shapes]"], "write eval.sets=[zeroshot:demo_shapes]"),
    ],
)  # fmt: skip
def test_replaced_keys_no_eval_sets_means_are_refused_in_one_line(settings, message, tmp_path: Path, capsys) -> None:
    assert main(["train", "model=slip_vit_micro", *SMALL, *settings, f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_an_older_runs_config_yaml_is_read_as_eval_sets(tmp_path: Path) -> None:
    old = tmp_path / "config.yaml"  # the eval section an older run saved: every replaced key, most at their defaults
    old.write_text(
        "eval:\n  zeroshot: [demo_shapes, demo_colours]\n  knn: []\n  linear: []\n  classnames: null\n"
        "  templates: null\n  catalog: null\n  prompts: reference\n  every_steps: 200\n"
    )
    with pytest.warns(FutureWarning, match=re.escape("eval.sets=[zeroshot:demo_shapes,zeroshot:demo_colours]")):
        cfg = make_config(yaml_path=old)
    assert cfg.eval.sets == ["zeroshot:demo_shapes", "zeroshot:demo_colours"]


def test_an_older_run_resumes_without_its_replaced_keys() -> None:
    # resume compares the checkpoint's saved settings with the eval section left free: no translation is needed
    saved = {"seed": 0, "eval": {"zeroshot": ["demo_shapes"], "knn": [], "catalog": None, "every_steps": 200}}
    assert changed_settings(saved, {"seed": 0, "eval": {"sets": ["zeroshot:demo_shapes"], "every_steps": 100}}) == []
