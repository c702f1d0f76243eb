"""The dataset catalog and the evaluation datasets built from folders / CSV files with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openslip.data.formats.class_lists import clean_folder_name
from openslip.errors import ConfigError, DataError
from openslip.eval.catalog import CATALOG_DIR, catalog_names, get_entry
from openslip.eval.datasets import open_classification, open_retrieval

PAPER_METRICS = {
    "aircraft": "mean_per_class",
    "pets": "mean_per_class",
    "caltech101": "mean_per_class",
    "flowers": "mean_per_class",
    "kinetics700": "top1_top5_mean",
    "hateful_memes": "roc_auc",
    "imagenet": "top1",
    "food101": "top1",
}


def test_catalog_has_the_references_28_datasets_with_the_papers_metrics() -> None:
    names = catalog_names()
    assert len(names) == 28  # the paper's 26, plus Birdsnap and VOC2007 of the reference's prompt files
    for name in names:
        e = get_entry(name)
        assert e.templates and all(t.count("{}") == 1 for t in e.templates)
        assert e.classnames is None or len(e.classnames) == e.num_classes
        assert e.layout
        assert e.metric == PAPER_METRICS.get(name, "top1"), name
    assert get_entry("Food-101").name == "food101" and get_entry("FGVC_Aircraft").name == "aircraft"
    assert len(get_entry("imagenet").classnames or ()) == 1000
    assert (CATALOG_DIR / "LICENSE-clip_benchmark.txt").is_file()
    with pytest.raises(ConfigError, match="no catalog entry"):
        get_entry("not_a_dataset")


def test_clean_folder_names() -> None:
    assert clean_folder_name("apple_pie") == "apple pie"
    assert clean_folder_name("ApplyEyeMakeup") == "apply eye makeup"
    assert clean_folder_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert clean_folder_name("12") == "12"


def _folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_folder_named_by_class_maps_to_catalog_order(tmp_path: Path) -> None:
    entry = get_entry("cifar10")
    root = _folder(tmp_path / "c10", sorted(entry.classnames or ()))  # sorted folders != catalog order
    ds = open_classification(str(root), catalog="cifar10", image_size=16)
    assert ds.classnames == list(entry.classnames or ())
    assert ds.metric == "top1" and ds.templates == list(entry.templates)
    for i in range(len(ds)):
        folder = ds.source.paths[i].split("/")[0]
        assert ds.classnames[ds.labels[i]] == folder
    x, y = ds[0]
    assert tuple(x.shape) == (3, 16, 16)


def test_index_folders_and_catalog_metric(tmp_path: Path) -> None:
    root = _folder(tmp_path / "memes", ["0", "1"])
    ds = open_classification(str(root), catalog="hateful_memes", image_size=16)
    assert ds.metric == "roc_auc" and ds.classnames == list(get_entry("hateful_memes").classnames or ())
    root = _folder(tmp_path / "nums", [str(i) for i in range(11)], per_class=1)  # "10" sorts before "2"
    ds = open_classification(str(root), image_size=16)
    assert [int(ds.source.paths[i].split("/")[0]) for i in range(len(ds))] == list(ds.labels)


def test_folder_names_without_catalog_names_and_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path / "food", ["apple_pie", "baby_back_ribs"])
    ds = open_classification(str(root), image_size=16)
    assert ds.classnames == ["apple pie", "baby back ribs"] and ds.metric == "top1"
    names = tmp_path / "names.txt"
    names.write_text("pie\nribs\n")
    assert open_classification(str(root), classnames=str(names), image_size=16).classnames == ["pie", "ribs"]
    with pytest.warns(UserWarning, match="2 of Food-101's 101 classes have a folder"):  # a subset of the classes
        ds = open_classification(str(root), catalog="food101", image_size=16)
    assert ds.num_classes == 101 and {ds.classnames[label] for label in ds.labels} == {"apple pie", "baby back ribs"}
    with pytest.raises(DataError, match="match no class name"):
        open_classification(str(_folder(tmp_path / "x", ["zebra", "cat"])), catalog="rendered_sst2", image_size=16)
    with pytest.raises(DataError, match="neither a demo task"):
        open_classification(str(tmp_path / "missing"))


def test_csv_with_catalog_names(tmp_path: Path) -> None:
    _folder(tmp_path / "img", ["a"], per_class=3)
    (tmp_path / "set.csv").write_text("image,label\nimg/a/0.png,1\nimg/a/1.png,0\n")
    ds = open_classification(str(tmp_path / "set.csv"), catalog="rendered_sst2", image_size=16)
    assert ds.classnames == ["negative", "positive"] and list(ds.labels) == [1, 0]
    (tmp_path / "named.csv").write_text("image,label\nimg/a/0.png,positive\nimg/a/2.png,negative\n")
    ds = open_classification(str(tmp_path / "named.csv"), catalog="rendered_sst2", image_size=16)
    assert list(ds.labels) == [1, 0]


def test_karpathy_retrieval_json(tmp_path: Path) -> None:
    import json

    _folder(tmp_path / "imgs", ["x"], per_class=3)
    doc = {
        "images": [
            {"filepath": "x", "filename": f"{i}.png", "split": "test" if i < 2 else "train",
             "sentences": [{"raw": f"image {i} caption {j}"} for j in range(3)]}
            for i in range(3)
        ]
    }  # fmt: skip
    (tmp_path / "imgs" / "dataset_test.json").write_text(json.dumps(doc))
    rs = open_retrieval(str(tmp_path / "imgs" / "dataset_test.json"), image_size=16)
    texts, owner = rs.flat()
    assert len(rs.images) == 2 and len(texts) == 6 and owner.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DataError, match="splits present"):
        open_retrieval(str(tmp_path / "imgs" / "dataset_test.json"), split="val", image_size=16)


def test_retrieval_manifest_merges_rows_of_one_image_and_reads_several_caption_columns(tmp_path: Path) -> None:
    _folder(tmp_path / "imgs", ["x"], per_class=3)
    # One caption per row (Flickr30k's CSV layout): rows of the same image become one image.
    (tmp_path / "rows.csv").write_text(
        "image,caption\nimgs/x/0.png,a red cube\nimgs/x/1.png,a blue ball\nimgs/x/0.png,the red cube\n"
        "imgs/x/0.png,a red cube\n"
    )
    rs = open_retrieval(str(tmp_path / "rows.csv"), image_size=16)
    texts, owner = rs.flat()
    assert len(rs.images) == 2 and texts == ["a red cube", "the red cube", "a blue ball"]
    assert owner.tolist() == [0, 0, 1]
    # Several caption columns per row.
    (tmp_path / "cols.csv").write_text("image,c1,c2\nimgs/x/0.png,one,uno\nimgs/x/2.png,two,dos\n")
    rs = open_retrieval(str(tmp_path / "cols.csv"), image_size=16, caption_keys="c1,c2")
    texts, owner = rs.flat()
    assert texts == ["one", "uno", "two", "dos"] and owner.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="c3"):
        open_retrieval(str(tmp_path / "cols.csv"), image_size=16, caption_keys="c1,c3")


def test_classnames_files_are_read_as_the_releases_ship_them(tmp_path: Path) -> None:
    from openslip.data.formats.class_lists import read_classnames

    cases = {
        "classInd.txt": ("1 ApplyEyeMakeup\n2 ApplyLipstick\n", ["apply eye makeup", "apply lipstick"]),
        "classes.txt": ("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n",
                        ["Black footed Albatross", "Laysan Albatross"]),
        "ClassName.txt": ("/a/abbey\n/b/bakery/shop\n", ["abbey", "bakery shop"]),
        "food.txt": ("apple_pie\nbaby_back_ribs\n", ["apple pie", "baby back ribs"]),
        "variants.txt": ("707-320\nF-16A/B\nCessna 172\n", ["707-320", "F-16A/B", "Cessna 172"]),
    }  # fmt: skip
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert read_classnames(tmp_path / name) == expected, name
    (tmp_path / "dup.txt").write_text("1 a_b\n2 a b\n")
    with pytest.raises(DataError, match="twice"):
        read_classnames(tmp_path / "dup.txt")
    # A CUB-style tree with the release's class list: folder k (sorted) gets line k's name.
    _folder(tmp_path / "cub", ["001.Black_footed_Albatross", "002.Laysan_Albatross"], per_class=2)
    ds = open_classification(str(tmp_path / "cub"), classnames=str(tmp_path / "classes.txt"), image_size=16)
    assert ds.classnames == ["Black footed Albatross", "Laysan Albatross"] and sorted(set(ds.labels)) == [0, 1]


def test_one_json_file_gives_class_names_and_templates(tmp_path: Path) -> None:
    from openslip.data.formats.class_lists import read_classnames, read_templates

    both = tmp_path / "prompts.json"
    both.write_text(json.dumps({"classnames": ["pie", "ribs"], "templates": ["a photo of {}, a dish."], "x": 1}))
    assert read_classnames(both) == ["pie", "ribs"] and read_templates(both) == ["a photo of {}, a dish."]
    root = _folder(tmp_path / "food", ["apple_pie", "baby_back_ribs"])
    for given in ({"classnames": str(both)}, {"templates": str(both)}):  # either option fills the other
        ds = open_classification(str(root), image_size=16, **given)
        assert ds.classnames == ["pie", "ribs"] and ds.templates == ["a photo of {}, a dish."]
    (tmp_path / "t.txt").write_text("{} on a plate\n")
    ds = open_classification(str(root), image_size=16, classnames=str(both), templates=str(tmp_path / "t.txt"))
    assert ds.classnames == ["pie", "ribs"] and ds.templates == ["{} on a plate"]  # the explicit file wins
    (tmp_path / "list.json").write_text(json.dumps(["{} again"]))
    assert read_templates(tmp_path / "list.json") == ["{} again"]
    # bad input: one line naming the file
    bad = {
        "half.json": (json.dumps({"templates": ["a {}"]}), 'no "classnames" list'),
        "empty.json": (json.dumps({"classnames": [], "templates": ["a {}"]}), '"classnames" must be a non-empty list'),
        "slot.json": (json.dumps({"classnames": ["a"], "templates": ["no slot"]}), "exactly one '{}'"),
        "broken.json": ('{"classnames": [', "not valid JSON"),
    }
    for name, (text, needle) in bad.items():
        (tmp_path / name).write_text(text)
        for reader in (read_classnames, read_templates) if name != "slot.json" else (read_templates,):
            with pytest.raises((DataError, ConfigError)) as err:
                reader(tmp_path / name)
            assert str(err.value).startswith(str(tmp_path / name)) and needle in str(err.value), name
    (tmp_path / "three.txt").write_text("pie\nribs\ncake\n")
    with pytest.raises(DataError, match=r"three.txt: 3 class names, but .*food has 2 class folders"):
        open_classification(str(root), classnames=str(tmp_path / "three.txt"), image_size=16)
