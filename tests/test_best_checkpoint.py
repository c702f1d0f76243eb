"""eval.best_metric: the evaluation that scored best keeps its checkpoint (`checkpoints/best` + best.json), keep_last
never prunes it, a stopped and resumed run ends with the same best as an uninterrupted one, and bad settings are one
line. The reference's CC3M / CC12M numbers are the best epoch's (SLIP#9)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_utils import overrides, read_metrics

import openslip
import openslip.train.loop
from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
METRIC = "zeroshot/demo_colours"
BEST = ("eval.sets=[zeroshot:demo_colours]", "eval.samples=16", "eval.every_steps=1", f"eval.best_metric={METRIC}")


def _ckpts(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))


def _best(run: Path) -> tuple[str, dict]:
    root = run / "checkpoints"
    return (root / "best").read_text().strip(), json.loads((root / "best.json").read_text())


def _scripted(monkeypatch: pytest.MonkeyPatch, scores: dict[int, float], stop_at: int | None = None) -> None:
    """Evaluate as usual, then report `scores[step]` as the score, so that the best step is known in advance; with
    `stop_at`, SIGTERM this process at that step (the run checkpoints and stops, as under a scheduler)."""
    real = openslip.train.loop.evaluate

    def evaluate(t):
        results = real(t)
        if t.step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {k: scores[t.step] for k in results}

    monkeypatch.setattr(openslip.train.loop, "evaluate", evaluate)


def test_best_pointer_and_json_name_the_best_evaluation_and_load(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    # checkpoints only at the end: the best step's checkpoint is saved because it is the best
    assert main(["train", *overrides(run, "train.steps=4", "ckpt.every_steps=100", *BEST)]) == 0
    out = capsys.readouterr()
    logged = [(r["step"], r[METRIC]) for r in read_metrics(run) if METRIC in r]
    assert [s for s, _ in logged] == [1, 2, 3, 4]
    top = max(v for _, v in logged)
    step = next(s for s, v in logged if v == top)  # a tie keeps the earlier step
    name, record = _best(run)
    assert name == f"step_{step:07d}" and name in _ckpts(run)
    assert record == {"step": step, "metric": METRIC, "value": top}
    assert f"best:       {run / 'checkpoints' / 'best'}  (step {step}" in out.out
    assert "best zeroshot/demo_colours so far" in out.err
    # the run directory still means the newest checkpoint; the pointer file loads the best one
    newest = openslip.load_model(run).state_dict()
    best = openslip.load_model(run / "checkpoints" / "best").state_dict()
    saved = load_file(str(run / "checkpoints" / name / "model.safetensors"))
    assert all(torch.equal(best[k], saved[k]) for k in saved)
    assert (step == 4) == all(torch.equal(newest[k], best[k]) for k in saved)
    # the checkpoint scores what it scored during training (the same 16 images)
    argv = ["eval", "zeroshot", "--model", str(run / "checkpoints" / "best"), "--dataset", "demo_colours", "-n", "16"]
    assert main([*argv, "--output", str(tmp_path / "zs.json")]) == 0
    assert json.loads((tmp_path / "zs.json").read_text())["score"] == pytest.approx(top)


def test_keep_last_never_prunes_the_best_and_prunes_a_former_best(tmp_path: Path, monkeypatch) -> None:
    # step 2 is the best until step 4 beats it; 5 and 6 do not: keep_last=1 keeps step 6 (the last) and 4 (the best)
    _scripted(monkeypatch, {1: 10.0, 2: 30.0, 3: 20.0, 4: 40.0, 5: 35.0, 6: 40.0})
    run = tmp_path / "run"
    assert main(["train", *overrides(run, "train.steps=6", "ckpt.every_steps=3", "ckpt.keep_last=1", *BEST)]) == 0
    assert _ckpts(run) == ["step_0000004", "step_0000006"]
    assert _best(run) == ("step_0000004", {"step": 4, "metric": METRIC, "value": 40.0})
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000006"


def test_best_mode_min(tmp_path: Path, monkeypatch) -> None:
    _scripted(monkeypatch, {1: 10.0, 2: 5.0, 3: 7.0})
    run = tmp_path / "run"
    assert main(["train", *overrides(run, "train.steps=3", "ckpt.every_steps=3", *BEST, "eval.best_mode=min")]) == 0
    assert _best(run)[1] == {"step": 2, "metric": METRIC, "value": 5.0}


def test_stopped_and_resumed_run_keeps_the_same_best(tmp_path: Path, monkeypatch, capsys) -> None:
    # step 2 stays the best; after the stop at step 4 only a resumed run that remembers it keeps it (a run that
    # forgot it would take step 5's 28 as its best)
    scores = {1: 10.0, 2: 30.0, 3: 20.0, 4: 25.0, 5: 28.0, 6: 27.0}
    argv = ["train", *overrides("RUN", "train.steps=6", "ckpt.every_steps=2", "ckpt.keep_last=1", *BEST)]
    ref, run = tmp_path / "ref", tmp_path / "run"
    _scripted(monkeypatch, scores)
    assert main([a.replace("RUN", str(ref)) for a in argv]) == 0

    _scripted(monkeypatch, scores, stop_at=4)
    assert main([a.replace("RUN", str(run)) for a in argv]) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step 4" in capsys.readouterr().err
    assert _ckpts(run) == ["step_0000002", "step_0000004"]
    for name in ("best", "best.json"):  # as if killed between the checkpoint and its pointer: resume rewrites them
        (run / "checkpoints" / name).unlink()
    _scripted(monkeypatch, scores)
    assert main([a.replace("RUN", str(run)) for a in argv]) == 0
    assert "resumed from" in capsys.readouterr().err

    assert _best(run) == _best(ref) == ("step_0000002", {"step": 2, "metric": METRIC, "value": 30.0})
    assert _ckpts(run) == _ckpts(ref) == ["step_0000002", "step_0000006"]
    for name in _ckpts(ref):
        a = load_file(str(ref / "checkpoints" / name / "model.safetensors"))
        b = load_file(str(run / "checkpoints" / name / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_best_whose_checkpoint_is_gone_is_chosen_anew_on_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    _scripted(monkeypatch, {1: 30.0, 2: 10.0, 3: 20.0, 4: 25.0})
    run = tmp_path / "run"
    argv = ["train", *overrides(run, "train.steps=4", "ckpt.every_steps=2", "ckpt.keep_last=1", *BEST)]
    first = ["train.steps=2" if a.startswith("train.steps=") else a for a in argv]  # train.steps may grow on resume
    assert main(first) == 0
    assert _best(run)[0] == "step_0000001"
    shutil.rmtree(run / "checkpoints" / "step_0000001")
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "the best checkpoint (zeroshot/demo_colours 30.00 at step 1) is not in" in err
    assert _best(run)[1] == {"step": 4, "metric": METRIC, "value": 25.0}  # the best of the steps trained after it


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["eval.sets=[zeroshot:demo_colours]", "eval.best_metric=zeroshot/demo_colours", "eval.every_steps=0"],
            "eval.best_metric='zeroshot/demo_colours' needs eval.every_steps > 0",
        ),
        (
            ["eval.sets=[zeroshot:demo_colours]", "eval.best_metric=zeroshot/demo_colours", "eval.best_mode=largest"],
            "eval.best_mode='largest' is not valid; choose one of: max, min",
        ),
        (
            ["eval.sets=[zeroshot:demo_colours]", "eval.best_metric=zeroshot/imagenet", "eval.every_steps=1"],
            "eval.best_metric='zeroshot/imagenet' is not among this run's evaluations (zeroshot/demo_colours): "
            "choose one of them, or evaluate eval.sets=[zeroshot:imagenet:/PATH/imagenet/val], or eval.best_metric='' "
            "to keep no best checkpoint",
        ),
        (
            ["eval.best_metric=knn/demo_shapes", "eval.every_steps=1"],
            "eval.best_metric='knn/demo_shapes' but this run evaluates nothing: add eval.sets=[knn:TEST@TRAIN]",
        ),
        (
            [
                "model=simclr_vit_micro",
                "loss.clip_scale=0",
                "eval.sets=[zeroshot:demo_colours,knn:demo_shapes]",
                "eval.best_metric=zeroshot/demo_colours",
                "eval.every_steps=1",
            ],  # fmt: skip
            "eval.best_metric='zeroshot/demo_colours': this model has no text tower, so no zero-shot score",
        ),
    ],
)
def test_bad_best_settings_are_one_line_before_training(extra, message, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", *overrides(run, "train.steps=1", *extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (run / "checkpoints").exists()


def test_cc_recipe_without_imagenet_refuses_in_one_line(tmp_path: Path, capsys) -> None:
    argv = ["train", "recipe=clip_vit_s16_cc3m", "data.train=demo", f"out_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "openslip train: error: eval.best_metric='zeroshot/imagenet' but this run evaluates nothing: add "
        "eval.sets=[zeroshot:imagenet:/PATH/imagenet/val], or eval.best_metric='' to keep no best checkpoint"
    )


def test_a_broken_best_pointer_is_one_line(tmp_path: Path, capsys) -> None:
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    (root / "best").write_text("step_0000009\n")
    argv = ["eval", "zeroshot", "--model", str(root / "best"), "--dataset", "demo_colours", "-n", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and f"cannot load {root / 'best'}: {root / 'best'} names a broken checkpoint" in err
    )


def _train_twice(info, out_dir: str) -> dict:
    from openslip.overrides import parse_overrides
    from openslip.train import train
    from openslip.train.recipes import make_config

    settings = overrides(out_dir, "ckpt.every_steps=100", "train.batch_size=8", *BEST)
    first = train(make_config(parse_overrides([*settings, "train.steps=2"])))
    second = train(make_config(parse_overrides([*settings, "train.steps=3"])))  # resumes at step 2
    return {"rank": info.rank, "best": [first["best"]["step"], second["best"]["step"]]}


@pytest.mark.multiprocess
def test_two_processes_agree_on_the_best_and_resume_it(tmp_path: Path) -> None:
    """Rank 0 decides and tells the others: every rank saves the best step's checkpoint (a collective)."""
    from dist_utils import run_distributed

    run = tmp_path / "run"
    results = run_distributed(_train_twice, 2, str(run), timeout_s=300)
    assert results[0]["best"] == results[1]["best"]
    name, record = _best(run)
    assert name == f"step_{record['step']:07d}" and name in _ckpts(run)
    assert record["step"] == results[0]["best"][1]
