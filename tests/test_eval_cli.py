"""`openslip eval / embed / finetune` end to end on micro models (original SLIP .pt files included)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openslip.cli import main
from openslip.eval.zero_shot import evaluate_demo_zero_shot
from openslip.models import create_model

RANDOM = ["--model", "slip_vit_micro", "--pretrained", "none"]


@pytest.fixture(scope="module")
def reference_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint laid out like the SLIP reference's: 'module.' keys and argparse.Namespace args."""
    torch.manual_seed(0)
    model = create_model("slip_vit_micro")
    path = tmp_path_factory.mktemp("ref") / "checkpoint_best.pt"
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": sd, "args": argparse.Namespace(model="slip_vit_micro")}, path)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_zeroshot_on_original_slip_checkpoint(reference_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "zs.json"
    preds, cm = tmp_path / "pred.csv", tmp_path / "cm.png"
    argv = ["eval", "zeroshot", "--model", str(reference_ckpt), "--dataset", "demo_shapes", "-n", "48"]
    code, stdout, _ = _run(
        [*argv, "--output", str(out), "--save-predictions", str(preds), "--confusion-matrix", str(cm)], capsys
    )
    assert code == 0 and "top1" in stdout and "<- reported" in stdout
    metrics = json.loads(out.read_text())
    assert metrics["metric"] == "top1" and metrics["score"] == metrics["top1"]
    assert {"top1", "top5", "mean_per_class", "num_samples"} <= set(metrics) and metrics["num_samples"] == 48
    assert len(preds.read_text().splitlines()) == 49
    assert Image.open(cm).format == "PNG"
    # the trainer's helper gives the same top-1 on the same images
    model = __import__("openslip").load_model(reference_ckpt)
    assert evaluate_demo_zero_shot(model, "demo_shapes", n=48)["top1"] == pytest.approx(metrics["top1"])


def test_zeroshot_folder_with_catalog(tmp_path: Path, capsys) -> None:
    for c in ("0", "1"):
        (tmp_path / "memes" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "memes" / c / f"{i}.jpg"
            )
    out = tmp_path / "m.json"
    argv = ["eval", "zeroshot", *RANDOM, "--dataset", str(tmp_path / "memes"), "--catalog", "hateful_memes"]
    code, _, _ = _run([*argv, "--output", str(out)], capsys)
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["metric"] == "roc_auc" and metrics["score"] == metrics["roc_auc"]


def test_user_errors_exit_2(tmp_path: Path, capsys) -> None:
    code, _, err = _run(["eval", "zeroshot", *RANDOM, "--dataset", str(tmp_path / "nope")], capsys)
    assert code == 2 and "neither a demo task" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(["eval", "zeroshot", "--model", "slip_vit_micro", "--dataset", "demo_shapes"], capsys)
    assert code == 2 and "--pretrained none" in err
    code, _, err = _run(["eval", "linear", *RANDOM, "--dataset", str(tmp_path)], capsys)
    assert code == 2 and "--train" in err
    code, _, err = _run(["eval", "zeroshot", *RANDOM, "--dataset", "demo_shapes", "--catalog", "nope"], capsys)
    assert code == 2 and "no catalog entry" in err


def test_retrieval_knn_linear_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    code, _, _ = _run(["eval", "retrieval", *RANDOM, "--dataset", "demo", "-n", "40", "--output", str(out)], capsys)
    r = json.loads(out.read_text())
    assert code == 0 and r["num_images"] == 40 and r["num_texts"] == 200
    assert {f"{w}_R@{k}" for w in ("image_to_text", "text_to_image") for k in (1, 5, 10)} <= set(r)
    common = [*RANDOM, "--dataset", "demo_shapes", "-n", "64", "--num-train", "96", "--cache-dir", str(tmp_path / "c")]
    code, _, _ = _run(["eval", "knn", *common, "--output", str(out)], capsys)
    assert code == 0 and json.loads(out.read_text())["k"] == 20
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 2  # train and test features cached
    code, _, _ = _run(["eval", "knn", *common, "--output", str(out)], capsys)  # from the cache
    assert code == 0
    code, _, _ = _run(
        [
            "eval",
            "linear",
            *common,
            "linear_protocol=sgd",
            "linear_epochs=1",
            "linear_batch_size=32",
            "--output",
            str(out),
        ],
        capsys,
    )
    assert code == 0 and json.loads(out.read_text())["lr"] == pytest.approx(0.1 * 32 / 256)


def test_embed_images_and_texts(tmp_path: Path, capsys) -> None:
    for i in range(3):
        Image.fromarray(np.full((24, 36, 3), 60 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    code, _, _ = _run(["embed", *RANDOM, "--input", str(tmp_path), "--output", str(tmp_path / "e.npy")], capsys)
    emb = np.load(tmp_path / "e.npy")
    assert code == 0 and emb.shape == (3, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert (tmp_path / "e.ids.txt").read_text().split() == ["im0.png", "im1.png", "im2.png"]
    (tmp_path / "t.txt").write_text("a red circle\na blue square\n")
    out = tmp_path / "t.safetensors"
    code, _, _ = _run(["embed", *RANDOM, "--text", "--input", str(tmp_path / "t.txt"), "--output", str(out)], capsys)
    from safetensors.torch import load_file

    assert code == 0 and load_file(str(out))["embeddings"].shape == (2, 64)


def test_finetune_demo_runs(tmp_path: Path, capsys) -> None:
    out, weights = tmp_path / "ft.json", tmp_path / "ft.safetensors"
    argv = ["finetune", *RANDOM, "--dataset", "demo_shapes", "-n", "32", "--num-train", "64", "epochs=1"]
    code, stdout, _ = _run([*argv, "batch_size=32", "--output", str(out), "--save", str(weights)], capsys)
    assert code == 0 and "finetune epoch 1/1" in stdout
    m = json.loads(out.read_text())
    assert m["num_samples"] == 32 and 0 <= m["top1"] <= 100
    from safetensors.torch import load_file

    assert load_file(str(weights))["head.weight"].shape == (8, 64)


def test_zeroshot_takes_one_json_of_class_names_and_templates(tmp_path: Path, capsys) -> None:
    for c in ("cat", "dog"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "val" / c / f"{i}.jpg"
            )
    both = tmp_path / "prompts.json"
    both.write_text(json.dumps({"classnames": ["kitten", "puppy"], "templates": ["a {}.", "my {}."]}))
    preds = tmp_path / "pred.csv"
    argv = ["eval", "zeroshot", *RANDOM, "--dataset", str(tmp_path / "val")]
    for option in ("--classnames", "--templates"):
        code, stdout, _ = _run([*argv, option, str(both), "--save-predictions", str(preds)], capsys)
        assert code == 0 and "6 images, 2 classes, 2 templates" in stdout
        assert {row.split(",")[3] for row in preds.read_text().splitlines()[1:]} == {"kitten", "puppy"}
    (tmp_path / "half.json").write_text(json.dumps({"classnames": ["kitten", "puppy"]}))
    code, _, err = _run([*argv, "--classnames", str(tmp_path / "half.json")], capsys)
    assert code == 2 and f'{tmp_path / "half.json"}: the JSON object has no "templates"' in err
    assert len(err.strip().splitlines()) == 1
