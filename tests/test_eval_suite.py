"""`openslip eval suite ROOT`: every catalog set under a folder scored in one command (one table, one JSON with each
set's metric and protocol); a malformed set is one line and the rest run; bad ROOTs are one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openslip.cli import main
from openslip.eval.catalog import get_entry
from openslip.eval.catalog_tree import find_catalog_sets

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # random weights; a few of a catalog set's classes
]
RANDOM = ["--model", "slip_vit_micro", "--pretrained", "none"]


def _images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def make_tree(root: Path) -> Path:
    """Two small catalog sets in two layouts (CIFAR-10's test split under test/ with class-name folders; Hateful
    Memes' class-index folders directly under its folder), a malformed one (Food-101 with a folder that is no
    class of it), a set without the split the paper reports (Pets: only train/), and a file that is no set."""
    for c, name in enumerate(["airplane", "cat"]):
        _images(root / "cifar10" / "test" / name, 3, seed=c)
    for c in ("0", "1"):
        _images(root / "hateful_memes" / c, 3, seed=10 + int(c))
    _images(root / "food101" / "not_a_dish", 2, seed=20)
    _images(root / "pets" / "train" / "cat", 2, seed=30)
    (root / "README.md").write_text("benchmark sets\n")
    return root


def test_folders_map_to_catalog_entries(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sets")
    _images(root / "Food-101" / "test" / "apple_pie", 1, seed=40)  # a second spelling of food101
    tree = find_catalog_sets(root)
    by_name = {s.name: s for s in tree.sets}
    assert list(by_name) == ["cifar10", "food101", "hateful_memes", "pets"]
    assert by_name["cifar10"].path == root / "cifar10" / "test"  # the entry's split folder
    assert by_name["hateful_memes"].path == root / "hateful_memes"  # the folder itself
    assert by_name["food101"].folder == root / "food101"  # the entry's own spelling wins
    assert by_name["pets"].path is None and "no test/ folder or test.csv" in by_name["pets"].problem
    assert tree.ignored == ["README.md"] and "a second folder for food101" in tree.skipped["Food-101"]


def test_suite_scores_the_sets_and_names_the_broken_ones(tmp_path: Path, capsys) -> None:
    root = make_tree(tmp_path / "sets")
    out = tmp_path / "suite.json"
    # --out: argparse's abbreviation of --output, the option of every eval command
    code = main(["eval", "suite", str(root), *RANDOM, "--out", str(out), "batch_size=4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    err = captured.err.strip().splitlines()
    assert len(err) == 3, err  # the ignored file, and one line per set that could not be scored
    assert err[0] == f"openslip eval suite: ignored under {root} (no catalog set of that name): README.md"
    food = next(line for line in err if "skipped food101" in line)
    assert "not_a_dish match no class name" in food
    assert any("skipped pets" in line and "no test/ folder" in line for line in err)
    table = captured.out.splitlines()
    assert table[0] == f"zero-shot suite {root}: 2 set(s) scored, 2 skipped (reference prompts)"
    assert [line.split()[0] for line in table[3:5]] == ["cifar10", "hateful_memes"] and table[6].startswith("mean")

    doc = json.loads(out.read_text())
    assert doc["num_scored"] == 2 and doc["num_skipped"] == 2 and set(doc["skipped"]) == {"food101", "pets"}
    cifar, memes = doc["sets"]["cifar10"], doc["sets"]["hateful_memes"]
    assert cifar["metric"] == "top1" and memes["metric"] == "roc_auc"  # each catalog entry's metric
    assert cifar["num_samples"] == 6 and cifar["num_classes"] == 10
    protocol = cifar["protocol"]
    entry = get_entry("cifar10")
    assert protocol["templates"] == list(entry.templates) and protocol["classnames"] == list(entry.classnames)
    assert protocol["crop_fraction"] == 1.0 and protocol["split"] == "test"
    assert protocol["prompts_from"] == "catalog cifar10 (reference prompts)"
    assert doc["mean_score"] == pytest.approx((cifar["score"] + memes["score"]) / 2)
    # the same score as `openslip eval zeroshot` on that set alone
    single = tmp_path / "cifar.json"
    argv = ["eval", "zeroshot", *RANDOM, "--dataset", str(root / "cifar10" / "test"), "--catalog", "cifar10"]
    assert main([*argv, "--output", str(single)]) == 0
    assert json.loads(single.read_text())["score"] == pytest.approx(cifar["score"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "not a directory"),
        (lambda root: (root / "notes").mkdir(parents=True), "no folder named after a catalog set (found only: notes)"),
        (lambda root: _images(root / "food101" / "not_a_dish", 1, 0), "no set under"),
    ],
)
def test_bad_roots_are_one_line(make, message: str, tmp_path: Path, capsys) -> None:
    root = tmp_path / "sets"
    make(root)
    code = main(["eval", "suite", str(root), *RANDOM])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("openslip eval suite: error: ") and message in err[-1], err
    assert len([line for line in err if "error:" in line]) == 1


def test_a_model_without_text_tower_is_refused(tmp_path: Path, capsys) -> None:
    root = make_tree(tmp_path / "sets")
    code = main(["eval", "suite", str(root), "--model", "simclr_vit_micro", "--pretrained", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no text tower" in err[0], err
