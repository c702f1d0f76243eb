"""Every registered recipe trains through `openslip train`, shrunk to a micro model of its own family."""

from pathlib import Path

import pytest

from openslip.cli import main
from openslip.models import MODELS
from openslip.train.recipes import RECIPES


def _micro_of_same_family(model: str) -> str:
    """The micro-sized registered model with the same parts (text tower, SimCLR head) as `model`."""
    parts = MODELS.get(model)
    for name in MODELS.names():
        cand = MODELS.get(name)
        same = (cand.text is None, cand.ssl_head is None) == (parts.text is None, parts.ssl_head is None)
        if same and cand.vision.width <= 64:
            return name
    raise AssertionError(f"no micro model with the parts of {model}")


@pytest.mark.parametrize("recipe", RECIPES.names())
def test_every_recipe_trains_two_steps_from_the_cli(tmp_path, recipe):
    model = _micro_of_same_family(RECIPES.get(recipe)().model)
    argv = ["train", f"recipe={recipe}", f"model={model}", f"out_dir={tmp_path}", "data.train=demo"]
    argv += ["train.steps=2", "train.batch_size=8", "train.log_every=1", "train.progress=false"]
    argv += ["data.num_workers=0", "optim.warmup_steps=1", "ckpt.every_steps=2", "eval.samples=16"]
    best = RECIPES.get(recipe)().eval.best_metric
    if best:  # the CC recipes keep the best ImageNet zero-shot epoch (SLIP#9): a demo set stands in for ImageNet
        argv += ["eval.sets=[zeroshot:demo_colours]", "eval.best_metric=zeroshot/demo_colours"]
    assert main(argv) == 0
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert (tmp_path / "checkpoints" / "best").exists() == bool(best)


def test_paper_recipes_run_the_papers_epochs_and_quote_its_numbers():
    from openslip.train.paper import PUBLISHED
    from openslip.train.recipes import DATASET_SIZES

    for row in PUBLISHED:  # every published run has its recipe, with the run's epochs
        base = f"{row.objective}_{row.size}_{row.dataset}"
        paper_epochs = {"yfcc15m": 25, "cc3m": 40, "cc12m": 35}[row.dataset]  # SLIP README's released runs
        name = base if row.epochs == paper_epochs else f"{base}_ep{row.epochs}"
        cfg = RECIPES.get(name)()
        per_epoch = DATASET_SIZES[row.dataset] // cfg.train.batch_size
        assert cfg.recipe == name and cfg.train.steps == row.epochs * per_epoch and cfg.optim.warmup_steps == per_epoch
        assert row.summary in RECIPES.get(name).__doc__ and f"{row.epochs} epochs" in RECIPES.get(name).__doc__


def test_docs_paper_table_gives_every_published_row_beside_its_recipe() -> None:
    """docs/PAPER.md quotes openslip.train.paper's numbers (the reference README's) row by row, each with a recipe."""
    from openslip.train.paper import PUBLISHED
    from openslip.train.recipes import recipe_name

    doc = (Path(__file__).resolve().parents[1] / "docs" / "PAPER.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1:-1] for line in doc.splitlines() if line.startswith("| ") and "`" in line]
    cells = [[c.strip() for c in row] for row in rows]
    assert len(cells) == len(PUBLISHED) == 19
    for row, want in zip(cells, PUBLISHED, strict=True):
        values = [None if c == "–" else float(c) for c in row[4:7]]
        assert values == [want.zeroshot, want.linear, want.finetune]
        assert int(row[3]) == want.epochs and row[7] == f"`{want.checkpoint}`"
        name = recipe_name(want.objective, want.size, want.dataset, want.epochs)
        assert row[8] == f"`{name}`" and name in RECIPES
