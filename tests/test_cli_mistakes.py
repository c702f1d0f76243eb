"""Common mistakes of a new user, each through the CLI: a clear error ending in one line (argparse's own errors add
its usage line), a non-zero exit, no traceback. The table of the closing note of the ecosystem issue, kept as a
test so none of them regresses to a traceback or silence."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

MISTAKES = [
    ("train modle=slip_vit_tiny", "unknown key 'modle'"),
    ("train model=slip_vit_huge", "is not a registered model"),
    ("train recipe=slip_b16", "unknown recipe 'slip_b16'"),
    ("train train.steps=abc", "should be of type int"),
    ("train train.steps=-5", "train.steps=-5 must be > 0"),
    ("train train.batch_size=0", "train.batch_size=0 must be > 0"),
    ("train train.precision=fp8", "train.precision='fp8' is not valid"),
    ("train optim.lr=-1", "optim.lr=-1.0 must be > 0"),
    ("train optim.lr=nan", "should be a finite number"),
    ("train data.train={tmp}/nothing.csv", "no such file or directory"),
    ("train data.train={tmp}/emptydir", "no images"),
    ("train data.train={tmp}/cols.csv", "data.train=FILE?caption_keys=COLUMN"),
    ("train data.image_size=70", "is not a multiple of slip_vit_tiny's patch size 16"),
    ("train train.batch_size=10 train.accum_steps=3", "is not divisible by train.accum_steps=3"),
    ("train head_norm=group", "head_norm='group' is not valid"),
    ("train loss.ssl_scale=0", "use model=clip_vit_tiny"),
    ("train eval.sets=[zeroshot:{tmp}/nothing]", "neither a demo task"),
    ("train eval.sets=[zeroshot:imagenett:{tmp}/emptydir]", "did you mean imagenet?"),
    ("train eval.classnames={tmp}/names.txt", "eval.classnames was replaced by eval.sets"),
    ("train resume={tmp}/nothing", "cannot resume"),
    ("train init_from={tmp}/nothing", "init_from="),
    ("train train.patch_dropout=1.5", "train.patch_dropout must be in [0, 1)"),
    ("train data.train=http://127.0.0.1:9/a.tar", "cannot reach it"),
    ("train --config {tmp}/bad.yaml", "is not valid YAML (line 2, column 1)"),
    ("train steps=5", "unknown key 'steps'"),
    ("eval zeroshot --dataset demo_shapes", "--model is required"),
    ("eval zeroshot --model {tmp}/nothing.pt --dataset demo_shapes", "no such checkpoint file or directory"),
    ("eval zeroshot --model slip_vit_micro --dataset demo_shapes", "is a model name, not a checkpoint"),
    ("eval zeroshot --model slip_vit_micro --pretrained none --dataset nowhere", "neither a demo task"),
    (
        "eval zeroshot --model slip_vit_micro --pretrained none --dataset demo_shapes --catalog imagenett",
        "did you mean imagenet?",
    ),
    ("eval zeroshot --model slip_vit_micro --pretrained none --dataset demo_shapes --image-size 100", "(try 96)"),
    (
        "eval zeroshot --model slip_vit_micro --pretrained none --dataset demo_shapes --crop-fraction 2",
        "--crop-fraction must be in (0, 1]",
    ),
    ("eval linear --model slip_vit_micro --pretrained none --dataset {tmp}/emptydir", "--train is required"),
    (
        "eval knn --model slip_vit_micro --pretrained none --dataset demo_shapes --train demo_colours",
        "first difference: 'red' vs 'circle'",
    ),
    ("eval retrieval --model simclr_vit_micro --pretrained none --dataset demo", "needs a model with a text tower"),
    (
        "finetune --model slip_vit_micro --pretrained none --dataset demo_shapes --preset vit_xl",
        "unknown finetune preset 'vit_xl'",
    ),
    ("plot {tmp}/emptydir", "is not a run directory"),
    ("convert {tmp}/nothing.pt {tmp}/out", "no such file or directory"),
    ("export slip_vit_micro {tmp}/exp --format keras", "invalid choice: 'keras'"),
    ("bench train model=slip_vit_huge", "is not a registered model"),
    ("compare --methods clip,slap", "unknown method 'slap'"),
    ("data inspect {tmp}/nothing.csv", "no such file or directory"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mistakes")
    (root / "cols.csv").write_text("img,txt\na.png,b\n")
    (root / "bad.yaml").write_text("not yaml: [\n")
    (root / "emptydir").mkdir()
    return root


@pytest.mark.parametrize(("command", "message"), MISTAKES, ids=[c for c, _ in MISTAKES])
def test_mistake_gets_one_clear_line(command: str, message: str, files: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # runs/ and plots land here
    argv = shlex.split(command.format(tmp=files))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: usage line + error line, exit 2
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None), command
    assert not any(line.startswith("Traceback") for line in err)
    assert err and message in err[-1] and err[-1].startswith("openslip"), err
    assert len(err) == 1 or (len(err) == 2 and err[0].startswith("usage:")), err
