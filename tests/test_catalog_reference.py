"""The zero-shot catalog against the 2021 reference's own prompt files, and the folder layouts it reads.

The reference (facebookresearch/SLIP at c6faf5d) ships `templates.json` and `labels.json`; openslip ships them
unchanged (their SHA-256 below is that of the published files) and its catalog must give exactly their prompts
and class names for every dataset, synonym lists included.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openslip.cli import main
from openslip.errors import ConfigError, DataError
from openslip.eval.catalog import REFERENCE_DIR, catalog_names, get_entry, split_catalog_spec
from openslip.eval.datasets import open_classification
from openslip.eval.zero_shot import zero_shot_classifier
from openslip.models import create_model
from openslip.tokenizer import get_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

# SHA-256 of the files as published in the reference repository (commit c6faf5d).
PUBLISHED_SHA256 = {
    "templates.json": "ccc78041c37274f8cb89849bba7dfce42df4627a08c5d1d449bb427afcf24bb1",
    "labels.json": "c168feecd3d2af59c3905b717eb0e7015b2d286b929b56a7f44a51438a4d0eeb",
    "LICENSE-SLIP.txt": "da6d3703ed11cbe42bd212c725957c98da23cbff1998c05fa4b3d976d1a58e93",
}
REFERENCE_KEYS = [
    "food101", "cifar10", "cifar100", "birdsnap", "cub200", "imagenet", "rendered_sst2", "hateful_memes",
    "clevr_counts", "kinetics700_frames", "ucf101_frames", "patch_camelyon", "country211", "kitti_distance",
    "gtsrb", "resisc45", "eurosat", "stl10", "fer2013", "mnist", "flowers", "caltech101", "pets", "dtd",
    "voc2007", "aircraft", "cars", "sun397",
]  # fmt: skip
RANDOM = ["--model", "slip_vit_micro", "--pretrained", "none"]


def _reference(name: str) -> object:
    return json.loads((REFERENCE_DIR / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(PUBLISHED_SHA256))
def test_shipped_reference_files_are_the_published_ones(name: str) -> None:
    assert hashlib.sha256((REFERENCE_DIR / name).read_bytes()).hexdigest() == PUBLISHED_SHA256[name]


def test_every_reference_dataset_is_catalogued_once() -> None:
    assert sorted(_reference("templates.json")) == sorted(REFERENCE_KEYS) == sorted(_reference("labels.json"))
    keys = [_entry_key(name) for name in catalog_names()]
    assert sorted(keys) == sorted(REFERENCE_KEYS)


def _entry_key(name: str) -> str:
    doc = json.loads((Path(REFERENCE_DIR).parent / "catalog" / f"{name}.json").read_text(encoding="utf-8"))
    return doc["reference_key"]


@pytest.mark.parametrize("key", REFERENCE_KEYS)
def test_catalog_prompts_equal_the_references(key: str) -> None:
    name = next(n for n in catalog_names() if _entry_key(n) == key)
    entry = get_entry(name)
    labels = _reference("labels.json")[key]
    assert list(entry.templates) == _reference("templates.json")[key]
    assert entry.prompt_names() == [x if isinstance(x, list) else [x] for x in labels]
    assert entry.num_classes == len(labels)


def test_clip_benchmark_prompts_stay_available() -> None:
    assert len(get_entry("imagenet", "clip_benchmark").templates) == 80
    assert len(get_entry("imagenet").templates) == 7
    with pytest.raises(ConfigError, match="no 'clip_benchmark' prompts"):
        get_entry("birdsnap", "clip_benchmark")
    with pytest.raises(ConfigError, match="unknown prompt set 'clip'"):
        get_entry("imagenet", "clip")


def test_synonym_classes_average_every_name_and_template_like_the_reference() -> None:
    torch.manual_seed(0)
    model = create_model("slip_vit_micro").double().eval()
    entry = get_entry("fer2013")
    tok = get_tokenizer()
    got = zero_shot_classifier(model, entry.prompt_names(), entry.templates)  # [D, C]
    for c, names in enumerate(entry.prompt_names()):  # naive: one class at a time, all (template, name) pairs
        rows = []
        for template in entry.templates:
            for name in names:
                e = model.encode_text(tok([template.format(name)], context_length=model.context_length))[0]
                rows.append(e / e.norm())
        mean = torch.stack(rows).mean(0)
        # the classifier returns float32; the float64 model leaves only that rounding
        torch.testing.assert_close(got[:, c].double(), mean / mean.norm(), rtol=0, atol=1e-6)
    assert len(entry.prompt_names()[6]) == 3  # "surprised", "shocked", "spooked"


def _images(root: Path, folders: list[str], per_folder: int = 2) -> Path:
    for k, folder in enumerate(folders):
        (root / folder).mkdir(parents=True)
        for i in range(per_folder):
            rng = np.random.default_rng(10 * k + i)
            Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(root / folder / f"{i}.jpg")
    return root


def _zeroshot(argv: list[str], tmp_path: Path, capsys) -> tuple[int, dict, list[dict], str]:
    out, preds = tmp_path / "zs.json", tmp_path / "pred.csv"
    code = main(["eval", "zeroshot", *RANDOM, "--image-size", "32", *argv, "--output", str(out),
                 "--save-predictions", str(preds)])  # fmt: skip
    err = capsys.readouterr().err
    if code:
        return code, {}, [], err
    return code, json.loads(out.read_text()), list(csv.DictReader(preds.open())), err


def test_imagenet_validation_folders_named_by_wordnet_id(tmp_path: Path, capsys) -> None:
    # ImageNet's own layout: ROOT/n01440764/... (tench, class 0), n01443537 (goldfish, 1), n15075141 (toilet paper)
    root = _images(tmp_path / "val", ["n01440764", "n01443537", "n15075141"])
    code, metrics, rows, err = _zeroshot(["--dataset", str(root), "--catalog", "imagenet"], tmp_path, capsys)
    assert code == 0, err
    assert metrics["num_samples"] == 6
    by_folder = {r["id"].split("/")[-2]: (int(r["label"]), r["label_name"]) for r in rows}
    assert by_folder == {"n01440764": (0, "tench"), "n01443537": (1, "goldfish"), "n15075141": (999, "toilet paper")}


def test_catalog_folders_by_index_and_by_numeric_name(tmp_path: Path) -> None:
    ds = open_classification(str(_images(tmp_path / "c10", ["3", "7"])), catalog="cifar10", image_size=32)
    assert ds.classnames == list(get_entry("cifar10").classnames) and sorted(set(ds.labels)) == [3, 7]
    # CLEVR's class names are counts, in the reference's order '10', '3', ..., '9': folders match by name
    ds = open_classification(str(_images(tmp_path / "clevr", ["10", "3"])), catalog="clevr_counts", image_size=32)
    assert {ds.classnames[label] for label in ds.labels} == {"10", "3"}
    assert ds.classnames[0] == "10"


def test_fer2013_synonyms_reach_the_evaluation(tmp_path: Path) -> None:
    ds = open_classification(str(_images(tmp_path / "fer", ["happy", "sad"])), catalog="fer2013", image_size=32)
    assert ds.prompt_names is not None and ds.prompt_names[3] == ["happy", "smiling"]
    names = tmp_path / "names.txt"
    names.write_text("angry\ndisgust\nfear\nhappy\nneutral\nsad\nsurprise\n")
    ds = open_classification(str(tmp_path / "fer"), catalog="fer2013", classnames=str(names), image_size=32)
    assert ds.prompt_names is None  # the user's names replace the catalog's synonym lists


def test_prompts_option_from_the_cli(tmp_path: Path, capsys) -> None:
    root = _images(tmp_path / "c10", ["cat", "dog"])
    for prompts, templates in (("reference", 18), ("clip_benchmark", 18)):
        code = main(["eval", "zeroshot", *RANDOM, "--image-size", "32", "--dataset", str(root), "--catalog",
                     "cifar10", "--prompts", prompts])  # fmt: skip
        assert code == 0 and f"{templates} templates" in capsys.readouterr().out
    code = main(["eval", "zeroshot", *RANDOM, "--dataset", str(root), "--catalog", "birdsnap", "--prompts",
                 "clip_benchmark"])  # fmt: skip
    assert code == 2 and "no 'clip_benchmark' prompts" in capsys.readouterr().err


def test_in_training_zero_shot_takes_catalog_names(tmp_path: Path, capsys) -> None:
    root = _images(tmp_path / "val", ["n01440764", "n01443537"], per_folder=1)
    run = tmp_path / "run"
    argv = ["model=slip_vit_micro", "data.image_size=32", "train.steps=1", "train.batch_size=4", "data.num_workers=0"]
    code = main(["train", *argv, f"out_dir={run}", f"eval.sets=[zeroshot:imagenet:{root}]", "eval.samples=2"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("zeroshot/imagenet" in r for r in records)


def test_split_catalog_spec() -> None:
    assert split_catalog_spec("imagenet:/data/val") == ("imagenet", "/data/val")
    assert split_catalog_spec("IN1k:val") == ("imagenet", "val")
    assert split_catalog_spec("/data/val") == (None, "/data/val")
    assert split_catalog_spec("retrieval:coco.json") == (None, "retrieval:coco.json")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--catalog", "imagenett"], "no catalog entry 'imagenett' (did you mean imagenet?)"),
        (["--catalog", "imagenet", "--dataset", "{bad}"], "match no class name, WordNet id or class index 0..999"),
        (["--catalog", "cifar10", "--dataset", "{bad}"], "match no class name or class index 0..9 of CIFAR-10"),
        (["--catalog", "cifar10", "--dataset", "{ok}", "--classnames", "{three}"], "3 class names, but"),
        (["--catalog", "cifar10", "--dataset", "{ok}", "--templates", "{notemplate}"], "exactly one '{}'"),
    ],
)
def test_catalog_bad_inputs_are_one_line_errors(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    paths = {
        "bad": _images(tmp_path / "bad", ["zebra_crossing", "n99999999"], per_folder=1),
        "ok": _images(tmp_path / "ok", ["cat", "dog", "frog", "truck"], per_folder=1),
        "three": tmp_path / "three.txt",
        "notemplate": tmp_path / "templates.txt",
    }
    paths["three"].write_text("a\nb\nc\n")
    paths["notemplate"].write_text("a photo of a thing.\n")
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) if "{" in a and a != "{}" else a for a in argv]
    if "--dataset" not in argv:
        argv += ["--dataset", str(paths["ok"])]
    code = main(["eval", "zeroshot", *RANDOM, "--image-size", "32", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_eval_prompts_config_is_checked(tmp_path: Path, capsys) -> None:
    assert main(["train", "eval.prompts=bogus", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "eval.prompts: unknown prompt set 'bogus'" in err, err
    with pytest.raises(DataError):
        open_classification("/nonexistent/path", catalog="imagenet")
