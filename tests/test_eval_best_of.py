"""The SGD probe and finetuning report the best of their evaluations (the reference's best_acc1, BEiT's
max_accuracy) or, with linear_report=final (finetune: --report final), the last epoch's; both carry best and final."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openslip.cli import main
from openslip.data.augment.classify import FinetuneTransform
from openslip.errors import ConfigError
from openslip.eval.best_of import best_and_final
from openslip.eval.linear import SGDProbeConfig

RANDOM = ["--model", "slip_vit_micro", "--pretrained", "none"]
DEMO = ["--dataset", "demo_shapes", "-n", "32", "--num-train", "64", "linear_batch_size=32"]
FINETUNE_DEMO = ["--dataset", "demo_shapes", "-n", "32", "--num-train", "64", "batch_size=32"]


def _m(score: float) -> dict[str, float]:
    return {"metric": "top1", "score": score, "top1": score}


def test_best_and_final_picks_the_earliest_best_and_the_last() -> None:
    evals = {10: _m(50.0), 20: _m(60.0), 30: _m(60.0), 40: _m(55.0)}
    best = best_and_final(evals, "best")
    assert best["score"] == 60.0 and best["best_epoch"] == 20.0 and best["final_score"] == 55.0
    assert best["final_epoch"] == 40.0 and best["report"] == "best"
    final = best_and_final(evals, "final")
    assert final["score"] == final["top1"] == 55.0 and final["best_score"] == 60.0 and final["report"] == "final"
    with pytest.raises(ConfigError, match="report must be one of best, final"):
        best_and_final(evals, "max")


def test_sgd_probe_defaults_are_the_reference_s() -> None:
    cfg = SGDProbeConfig()
    assert (cfg.batch_size, cfg.epochs, cfg.eval_every, cfg.report) == (1024, 90, 10, "best")  # 128 x 8 GPUs
    with pytest.raises(ConfigError):
        SGDProbeConfig(eval_every=0)


def _json(argv: list[str], out: Path, capsys: pytest.CaptureFixture) -> dict:
    code = main([*argv, "--output", str(out)])
    capsys.readouterr()
    assert code == 0
    return json.loads(out.read_text())


def test_sgd_probe_cli_reports_best_and_final(tmp_path: Path, capsys) -> None:
    argv = ["eval", "linear", *RANDOM, *DEMO, "linear_protocol=sgd", "linear_epochs=3", "linear_eval_every=1"]
    best = _json(argv, tmp_path / "best.json", capsys)
    assert best["report"] == "best" and best["final_epoch"] == 3 and best["best_epoch"] in (1, 2, 3)
    assert best["score"] == best["best_score"] >= best["final_score"]
    final = _json([*argv, "linear_report=final"], tmp_path / "final.json", capsys)
    assert final["score"] == final["final_score"] == best["final_score"]  # same seed, same run
    assert final["best_score"] == best["best_score"]


def test_finetune_cli_reports_best_and_final(tmp_path: Path, capsys) -> None:
    argv = ["finetune", *RANDOM, *FINETUNE_DEMO, "epochs=2", "--eval-every", "1", "--report", "final"]
    m = _json(argv, tmp_path / "ft.json", capsys)
    assert m["report"] == "final" and m["final_epoch"] == 2 and m["score"] == m["final_score"]
    assert m["best_score"] >= m["final_score"] and m["best_epoch"] in (1, 2)


def test_bad_eval_every_and_report_fail_in_one_line(capsys) -> None:
    code = main(["eval", "linear", *RANDOM, *DEMO, "linear_protocol=sgd", "linear_eval_every=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "eval_every must be positive" in err[0]
    code = main(["finetune", *RANDOM, *FINETUNE_DEMO, "--eval-every", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "eval_every must be >= 0" in err[0]
    with pytest.raises(SystemExit):  # argparse: usage and one error line naming the choices
        main(["finetune", *RANDOM, *FINETUNE_DEMO, "--report", "max"])
    assert "invalid choice: 'max'" in capsys.readouterr().err


def test_finetune_train_crops_resize_bicubic_as_beit() -> None:
    """BEiT's --train_interpolation default is bicubic: the crop equals PIL's bicubic resize of the same box."""
    img = np.random.default_rng(0).integers(0, 256, (48, 72, 3), dtype=np.uint8)
    t = FinetuneTransform(24, flip=False)
    x = t(img, torch.Generator().manual_seed(3))  # [3, 24, 24] normalised
    from openslip.data.augment.params import IMAGENET_MEAN, IMAGENET_STD, ViewRecipe, sample_view_params

    params = sample_view_params(48, 72, ViewRecipe(scale=(0.08, 1.0), flip_p=0.0), torch.Generator().manual_seed(3))
    top, left, h, w = params.crop
    want = np.asarray(Image.fromarray(img).crop((left, top, left + w, top + h)).resize((24, 24), Image.BICUBIC))
    got = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    got = (got * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(got - want).max() <= 1.01  # torch's antialiased uint8 bicubic is PIL's filter to one grey level
