"""Writers never delete what they did not write (issue 24): every command that writes a folder or a file refuses,
in one line and before it changes a byte, a training run, a checkpoint, its own input and a folder holding files it
would not write; `--force` replaces only the command's own files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image
from train_utils import overrides

import openslip
from openslip import outputs
from openslip.cli import main
from openslip.train import rundir as train
from openslip.weights import checkpoint


def tree(root: Path) -> dict[str, str]:
    """Every file (hidden ones too) and folder under `root`: path -> SHA-256 of its bytes, or "dir"."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A two-step training run, its checkpoint, a saved model, a folder with a user's file, captioned images
    and their shards."""
    root = tmp_path_factory.mktemp("writers")
    assert main(["train", *overrides(root / "run", "train.steps=2")]) == 0
    ckpt = checkpoint.find_latest_checkpoint(root / "run")
    openslip.save_model(openslip.create_model("slip_vit_micro"), root / "model")
    (root / "bare.safetensors").write_bytes((root / "model" / "model.safetensors").read_bytes())  # weights alone
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("the user's own file\n")
    images = root / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (24, 24), (40 * i, 90, 200 - 40 * i)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a square number {i}")
    assert main(["data", "make-shards", str(images), str(root / "shards"), "--shard-size", "2"]) == 0
    return {"root": root, "run": root / "run", "ckpt": ckpt, "model": root / "model", "bare": root / "bare.safetensors",
            "mine": root / "mine", "images": images, "shards": root / "shards"}  # fmt: skip


def refused(args: list[str], world: dict[str, Path], capsys, match: str = "") -> str:
    """`openslip ARGS` ends in one line, exit 2, and leaves every byte under the test's folder as it was."""
    capsys.readouterr()
    before = tree(world["root"])
    assert main(args) == 2, args
    err = capsys.readouterr().err
    name = " ".join(args[:2]) if args[0] == "eval" else args[0]  # `openslip eval knn: error: ...`, as argparse's
    assert err.count("\n") == 1 and err.startswith(f"openslip {name}: error: ") and "Traceback" not in err, err
    assert match in err, err
    assert tree(world["root"]) == before, f"{args} changed files"
    return err


# ------------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("fmt", ["openslip", "timm", "open_clip", "hf"])
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_export_refuses_runs_checkpoints_sources_and_foreign_folders(world, capsys, fmt, force):
    run, ckpt, model, mine = world["run"], world["ckpt"], world["model"], world["mine"]
    export = ["export", "--format", fmt, *force]
    refused([*export, str(run), str(run)], world, capsys, "training run directory")  # the case
    refused([*export, str(model), str(run)], world, capsys, "training run directory")
    refused([*export, str(ckpt), str(ckpt)], world, capsys, "checkpoint directory")
    refused([*export, str(model), str(ckpt)], world, capsys, "checkpoint directory")
    refused([*export, str(model), str(model)], world, capsys)  # the source itself (a saved model)
    refused([*export, str(model / "model.safetensors"), str(model)], world, capsys)  # a folder holding the source
    refused([*export, str(model), str(mine)], world, capsys, "notes.txt")
    refused([*export, str(model), str(run / "checkpoints")], world, capsys, "checkpoints")
    refused([*export, str(model), str(ckpt / "export")], world, capsys, "inside the checkpoint directory")
    refused([*export, str(model), str(run / "config.yaml")], world, capsys, "is a file")
    refused([*export, str(model), str(mine / "notes.txt" / "out")], world, capsys, "is a file")


def test_export_timm_into_a_checkpoint_without_checksums_is_refused(world, tmp_path, capsys):
    """A checkpoint written before checksums existed holds only names timm writes: still not timm's to replace."""
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.safetensors", "config.json"):
        (old / name).write_bytes((world["model"] / name).read_bytes())
    before = tree(old)
    assert main(["export", "--format", "timm", "--force", str(world["model"]), str(old)]) == 2
    assert "checkpoint directory this command did not write" in capsys.readouterr().err
    assert tree(old) == before


@pytest.mark.parametrize("fmt", ["openslip", "timm"])
def test_export_force_replaces_only_its_own_files(world, tmp_path, capsys, fmt):
    out = tmp_path / "out"
    assert main(["export", "--format", fmt, str(world["model"]), str(out)]) == 0
    first = tree(out)
    inode = out.stat().st_ino
    assert main(["export", "--format", fmt, str(world["ckpt"]), str(out)]) == 2  # exists: --force needed
    assert "--force" in capsys.readouterr().err and tree(out) == first
    assert main(["export", "--format", fmt, "--force", str(world["ckpt"]), str(out)]) == 0
    second = tree(out)
    assert set(second) == set(first)  # the same files, no staging folder left
    assert second["model.safetensors"] != first["model.safetensors"]  # the trained weights replaced the saved ones
    assert out.stat().st_ino == inode  # the folder itself was never removed
    if fmt == "openslip":
        trained = checkpoint.load_model(world["ckpt"]).state_dict()
        back = openslip.load_model(out).state_dict()  # checksums.json matches the new files
        assert all((trained[k] == back[k]).all() for k in trained)
    other = "timm" if fmt == "openslip" else "openslip"
    assert main(["export", "--format", other, "--force", str(world["model"]), str(out)]) == 2  # not its files
    assert tree(out) == second


def test_export_leaves_staging_leftovers_to_no_one(world, tmp_path):
    """A staging folder a killed export left is the export's own: the next --force run removes it."""
    out = tmp_path / "out"
    assert main(["export", "--format", "openslip", str(world["model"]), str(out)]) == 0
    (out / ".openslip-tmp-killed").mkdir()
    assert main(["export", "--format", "openslip", "--force", str(world["model"]), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checksums.json", "config.json", "model.safetensors", "preprocessor_config.json"]
    )


# ------------------------------------------------------------------------------------------------ convert


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_convert_refuses_runs_checkpoints_sources_and_foreign_folders(world, capsys, force):
    run, ckpt, model, mine = world["run"], world["ckpt"], world["model"], world["mine"]
    refused(["convert", *force, str(model), str(run)], world, capsys, "training run directory")
    refused(["convert", *force, str(ckpt), str(ckpt)], world, capsys, "checkpoint directory")
    refused(["convert", *force, str(model), str(ckpt)], world, capsys, "checkpoint directory")
    refused(["convert", *force, str(model), str(model)], world, capsys)
    refused(["convert", *force, str(model), str(mine)], world, capsys, "notes.txt")
    refused(["convert", *force, str(model), str(run / "metrics.jsonl")], world, capsys, "is a file")


def test_convert_force_replaces_only_its_own_files(world, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(world["model"]), str(out)]) == 0
    first, inode = tree(out), out.stat().st_ino
    assert sorted(first) == ["checksums.json", "config.json", "model.safetensors"]
    assert main(["convert", "--force", str(world["ckpt"]), str(out)]) == 0
    assert set(tree(out)) == set(first) and tree(out)["model.safetensors"] != first["model.safetensors"]
    assert out.stat().st_ino == inode
    openslip.load_model(out)  # checksums match
    (out / "mine.txt").write_text("x")
    assert main(["convert", "--force", str(world["model"]), str(out)]) == 2
    assert "mine.txt" in capsys.readouterr().err and (out / "mine.txt").read_text() == "x"


# ------------------------------------------------------------------------------------------------ data


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_make_shards_refuses_runs_checkpoints_sources_and_foreign_folders(world, capsys, overwrite):
    run, ckpt, images, shards, mine = world["run"], world["ckpt"], world["images"], world["shards"], world["mine"]
    make = ["data", "make-shards", *overwrite]
    refused([*make, str(images), str(run)], world, capsys, "training run directory")
    refused([*make, str(images), str(ckpt)], world, capsys, "checkpoint directory")
    refused([*make, str(images), str(mine)], world, capsys, "notes.txt")
    refused([*make, str(images), str(images)], world, capsys)  # the source: a folder of images
    refused([*make, str(shards), str(shards)], world, capsys, "input")  # --overwrite deleted the source shards
    refused([*make, str(shards / "shard-{000000..000001}.tar"), str(shards)], world, capsys, "input")


def test_make_shards_overwrite_replaces_only_its_shards(world, tmp_path):
    out = tmp_path / "s"
    assert main(["data", "make-shards", str(world["images"]), str(out), "--shard-size", "1"]) == 0
    assert main(["data", "make-shards", str(world["images"]), str(out), "--shard-size", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard-000000.tar", "shard-000001.tar"]


def test_inspect_output_is_never_a_run_file(world, capsys):
    run, ckpt = world["run"], world["ckpt"]
    refused(["data", "inspect", str(world["images"]), "--output", str(run / "config.yaml")], world, capsys, "run")
    refused(["data", "inspect", str(world["images"]), "--output", str(ckpt / "grid.png")], world, capsys, "checkpoint")
    refused(["data", "inspect", str(world["images"]), "--output", str(world["mine"])], world, capsys, "folder")


# ------------------------------------------------------------------------------------------ file outputs


def test_embed_output_is_never_a_run_file_or_its_input(world, capsys):
    run, ckpt, model = world["run"], world["ckpt"], world["model"]
    embed = ["embed", "--model", str(model), "--input", str(world["images"])]
    refused([*embed, "--output", str(ckpt / "model.safetensors")], world, capsys, "checkpoint directory")
    refused([*embed, "--output", str(run / "checkpoints" / "x.npy")], world, capsys, "checkpoints")
    lines = world["root"] / "lines.ids.txt"
    lines.write_text("a photo of a cat\n")
    text = ["embed", "--model", str(model), "--text", "--input", str(lines)]
    refused([*text, "--output", str(lines.with_name("lines.npy"))], world, capsys, "input")
    bare = str(world["bare"])
    refused(["embed", "--model", bare, "--input", str(world["images"]), "--output", bare], world, capsys, "input")


def test_eval_outputs_are_never_a_run_file(world, capsys):
    run, ckpt = world["run"], world["ckpt"]
    zeroshot = ["eval", "zeroshot", "--model", str(run), "--dataset", "demo_shapes"]
    refused([*zeroshot, "--output", str(run / "metrics.jsonl")], world, capsys, "metrics.jsonl")
    refused([*zeroshot, "--output", str(run / "config.yaml")], world, capsys, "config.yaml")
    refused([*zeroshot, "--confusion-matrix", str(ckpt / "cm.png")], world, capsys, "checkpoint directory")
    refused([*zeroshot, "--save-predictions", str(run / "checkpoints" / "latest")], world, capsys, "checkpoints")
    refused([*zeroshot, "--cache-dir", str(run)], world, capsys, "training run directory")
    refused([*zeroshot, "--cache-dir", str(ckpt)], world, capsys, "checkpoint directory")
    bare = str(world["bare"])
    refused(["eval", "zeroshot", "--model", bare, "--dataset", "demo_shapes", "--output", bare], world, capsys, "input")


def test_finetune_outputs_are_never_a_run_or_checkpoint(world, capsys):
    run, ckpt, model = world["run"], world["ckpt"], world["model"]
    finetune = ["finetune", "--model", str(run), "--dataset", "demo_shapes", "--preset", "demo"]
    refused([*finetune, "--out-dir", str(run)], world, capsys, "training run directory")
    refused([*finetune, "--out-dir", str(ckpt)], world, capsys, "checkpoint directory")
    refused([*finetune, "--out-dir", str(run / "checkpoints" / "ft")], world, capsys, "checkpoints")
    refused([*finetune, "--save", str(ckpt / "model.safetensors")], world, capsys, "checkpoint directory")
    refused([*finetune, "--output", str(run / "config.yaml")], world, capsys, "config.yaml")
    bare = str(world["bare"])
    refused(["finetune", "--model", bare, "--dataset", "demo_shapes", "--save", bare], world, capsys, "input")
    refused(["finetune", "--model", str(model), "--dataset", "demo_shapes", "--out-dir", str(model)], world, capsys)


def test_plot_and_compare_never_write_into_a_run_or_checkpoint(world, capsys):
    run, ckpt = world["run"], world["ckpt"]
    refused(["plot", str(run), "--out", str(run)], world, capsys, "training run directory")
    refused(["plot", str(run), "--out", str(ckpt)], world, capsys, "checkpoint directory")
    refused(["plot", str(run), "--out", str(run / "tensorboard" / "png")], world, capsys, "tensorboard")
    refused(["plot", str(run), "--out", str(run / "config.yaml")], world, capsys, "is a file")
    refused(["compare", "--out-dir", str(run)], world, capsys, "training run directory")
    refused(["compare", "--out-dir", str(ckpt)], world, capsys, "checkpoint directory")
    refused(["compare", "--out-dir", str(run / "checkpoints" / "cmp")], world, capsys, "checkpoints")
    refused(["compare", "--out-dir", str(world["mine"])], world, capsys, "not empty")
    refused(["bench", "train", "--output", str(run / "metrics.jsonl")], world, capsys, "metrics.jsonl")


def test_the_protected_names_are_the_ones_the_writers_use():
    """outputs.py cannot import train.py or checkpoint.py (it sits below them): their names are restated there."""
    assert outputs.CHECKPOINT_PAIR == (checkpoint.MODEL_FILE, checkpoint.CONFIG_FILE)
    assert outputs.CHECKPOINT_ONLY == (checkpoint.CHECKSUM_FILE, checkpoint.TRAIN_STATE_FILE)
    assert {train.LOCK_FILE, checkpoint.CHECKPOINTS_DIR, "config.yaml", "metrics.jsonl"} <= outputs.RUN_ENTRIES
    assert all("/" not in name for name in outputs.RUN_ENTRIES)
