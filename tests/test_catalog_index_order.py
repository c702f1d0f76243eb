"""Class-index layouts (`ROOT/0/ ROOT/1/ ...`, integer CSV labels) get the right class names, through the CLI.

CLEVR-Counts, FER-2013 and Pets number their classes in an order that is not the reference's class order
('10', '3', …, '9'; alphabetical emotions; capitalised cat breeds first), so index layouts follow the dataset's own
order, and every prompt set reads the same index as the same class.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openslip.cli import main
from openslip.eval.catalog import catalog_names, get_entry

pytestmark = pytest.mark.usefixtures("one_thread")

RANDOM = ["--model", "slip_vit_micro", "--pretrained", "none", "--image-size", "32"]
FER_NATIVE = ["angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"]  # fer2013.csv's 0..6


def _tree(root: Path, folders: list[str]) -> Path:
    for k, folder in enumerate(folders):
        (root / folder).mkdir(parents=True)
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
            root / folder / "a.png"
        )
    return root


def _names_by_folder(tmp_path: Path, capsys, dataset: Path, catalog: str, *more: str) -> dict[str, str]:
    """folder (or image) -> the class name the evaluation scored it against, from --save-predictions and --output."""
    out, preds = tmp_path / "zs.json", tmp_path / "pred.csv"
    argv = ["eval", "zeroshot", *RANDOM, "--dataset", str(dataset), "--catalog", catalog, *more]
    code = main([*argv, "--output", str(out), "--save-predictions", str(preds)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(preds.open()))
    assert json.loads(out.read_text())["num_samples"] == len(rows)
    return {Path(r["id"]).parent.name if dataset.is_dir() else Path(r["id"]).stem: r["label_name"] for r in rows}


def test_clevr_index_tree_is_counts_three_to_ten(tmp_path: Path, capsys) -> None:
    root = _tree(tmp_path / "clevr", [str(k) for k in range(8)])
    got = _names_by_folder(tmp_path, capsys, root, "clevr_counts")
    assert got == {str(k): str(k + 3) for k in range(8)}  # the reference's order '10', '3', … would give 0 -> '10'
    got = _names_by_folder(tmp_path, capsys, root, "clevr_counts", "--prompts", "clip_benchmark")
    words = ["three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    assert got == {str(k): words[k] for k in range(8)}


def test_clevr_folders_named_by_count_still_match_by_name(tmp_path: Path, capsys) -> None:
    root = _tree(tmp_path / "clevr", ["3", "10"])
    with pytest.warns(UserWarning, match="2 of CLEVR Counts's 8 classes have a folder"):
        got = _names_by_folder(tmp_path, capsys, root, "clevr_counts")
    assert got == {"3": "3", "10": "10"}


def test_fer_index_tree_is_the_datasets_emotion_order(tmp_path: Path, capsys) -> None:
    root = _tree(tmp_path / "fer", [str(k) for k in range(7)])
    for prompts in ("reference", "clip_benchmark"):
        got = _names_by_folder(tmp_path, capsys, root, "fer2013", "--prompts", prompts)
        assert got == {str(k): name for k, name in enumerate(FER_NATIVE)}  # 4 sad, 5 surprised, 6 neutral


def test_fer_kaggle_folder_names(tmp_path: Path, capsys) -> None:
    kaggle = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    root = _tree(tmp_path / "fer", kaggle)
    got = _names_by_folder(tmp_path, capsys, root, "fer2013")
    assert got == dict(
        zip(kaggle, ["angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"], strict=True)
    )


def test_fer_csv_integer_labels_and_names(tmp_path: Path, capsys) -> None:
    image = _tree(tmp_path / "img", ["x"]) / "x" / "a.png"
    for k in range(7):
        (tmp_path / f"i{k}.png").write_bytes(image.read_bytes())
    by_index, by_name = tmp_path / "index.csv", tmp_path / "name.csv"
    by_index.write_text("image,label\n" + "".join(f"i{k}.png,{k}\n" for k in range(7)))
    by_name.write_text("image,label\n" + "".join(f"i{k}.png,{name}\n" for k, name in enumerate(FER_NATIVE)))
    want = {f"i{k}": name for k, name in enumerate(FER_NATIVE)}
    assert _names_by_folder(tmp_path, capsys, by_index, "fer2013") == want
    assert _names_by_folder(tmp_path, capsys, by_name, "fer2013") == want


def test_pets_index_tree_is_the_datasets_class_ids(tmp_path: Path, capsys) -> None:
    root = _tree(tmp_path / "pets", ["0", "1", "5", "36"])
    with pytest.warns(UserWarning, match="4 of Oxford-IIIT Pets's 37 classes"):
        got = _names_by_folder(tmp_path, capsys, root, "pets")
    # list.txt's class ids 1, 2, 6, 37 (the reference's order would give Bengal for 1/)
    assert got == {"0": "Abyssinian", "1": "american bulldog", "5": "Bengal", "36": "yorkshire terrier"}


def test_kitti_index_tree_means_the_same_under_both_prompt_sets(tmp_path: Path, capsys) -> None:
    root = _tree(tmp_path / "kitti", ["0", "1", "2", "3"])
    reference = _names_by_folder(tmp_path, capsys, root, "kitti_distance")
    assert reference["0"] == "a photo i took with a car in the distance."
    assert _names_by_folder(tmp_path, capsys, root, "kitti_distance", "--prompts", "clip_benchmark") == reference


_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def _same_class(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _WORDS.get(key, key)


@pytest.mark.parametrize("name", catalog_names())
def test_every_prompt_set_reads_an_index_as_the_same_class(name: str) -> None:
    reference = get_entry(name)
    try:
        other = get_entry(name, "clip_benchmark")
    except Exception:  # Birdsnap, VOC2007: only the reference's prompts
        return
    if reference.classnames is None or other.classnames is None:
        return
    ref_order = reference.index_classes or range(reference.num_classes)
    other_order = other.index_classes or range(other.num_classes)
    got = [_same_class(other.classnames[c]) for c in other_order]
    assert got == [_same_class(reference.classnames[c]) for c in ref_order]


def test_list_shows_the_split_and_an_entry_its_class_indices(capsys) -> None:
    assert main(["eval", "zeroshot", "--list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    for name in ("cub200", "eurosat", "kitti_distance", "pcam", "ucf101"):
        assert " val* " in lines[name], lines[name]
    assert " test " in lines["food101"] and " val " in lines["imagenet"]
    assert main(["eval", "zeroshot", "--list", "--catalog", "pcam"]) == 0
    out = capsys.readouterr().out
    assert "split: val (The reference's dataset_catalog.json scores its folder named val" in out
    assert main(["eval", "zeroshot", "--list", "--catalog", "clevr"]) == 0
    assert "class indices: 0 3, 1 4, 2 5, 3 6, 4 7, 5 8, 6 9, 7 10" in capsys.readouterr().out
