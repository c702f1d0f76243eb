"""The CC3M / CC12M recipes evaluate every epoch and keep the best epoch's checkpoint: the paper's numbers for them
are the best epoch (SLIP#9)."""

from __future__ import annotations

import pytest
import yaml

from openslip.cli import main
from openslip.train.recipes import DATASET_SIZES, RECIPES


def _printed_config(capsys, recipe: str) -> dict:
    assert main(["train", f"recipe={recipe}", "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize(
    "recipe", ["slip_vit_b16_cc3m", "clip_vit_b16_cc3m", "slip_vit_b16_cc12m", "clip_vit_s16_cc12m"]
)
def test_cc_recipes_evaluate_every_epoch_and_say_why(recipe: str, capsys) -> None:
    cfg = _printed_config(capsys, recipe)
    per_epoch = DATASET_SIZES[recipe.rsplit("_", 1)[1]] // cfg["train"]["batch_size"]
    assert cfg["eval"]["every_steps"] == cfg["ckpt"]["every_steps"] == per_epoch  # a checkpoint at every evaluation
    assert cfg["eval"]["sets"] == []  # ImageNet's path is the user's: eval.sets=[zeroshot:imagenet:PATH]
    assert (cfg["eval"]["best_metric"], cfg["eval"]["best_mode"]) == ("zeroshot/imagenet", "max")
    doc = RECIPES.get(recipe).__doc__
    assert "best epoch" in doc and "SLIP#9" in doc and "eval.sets=[zeroshot:imagenet:" in doc
    assert "checkpoints/best" in doc and "no best checkpoint yet" not in doc
    assert ("SLIP#15" in doc and "optim.wd=0.5" in doc) == recipe.endswith("cc3m")


@pytest.mark.parametrize("recipe", ["slip_vit_b16_yfcc15m", "simclr_vit_b16_cc3m"])
def test_other_paper_recipes_do_not_evaluate_during_training(recipe: str, capsys) -> None:
    evaluation = _printed_config(capsys, recipe)["eval"]
    assert evaluation["every_steps"] == 0 and evaluation["best_metric"] == ""
