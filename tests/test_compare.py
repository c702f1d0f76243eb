"""`openslip compare` through the CLI: the table, resumption after SIGKILL, and bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openslip.cli import main

# The default experiment, shrunk: micro models, 2 steps, small demo sets.
SMALL = ["model=slip_vit_micro", "train.steps=2", "train.batch_size=8", "data.num_workers=0", "train.progress=false"]
SMALL_EVAL = ["--num-test", "32", "--num-train", "64", "--bootstrap", "100"]


def _compare(out: Path, *extra: str) -> int:
    return main(["compare", "--out-dir", str(out), *SMALL_EVAL, *SMALL, *extra])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "exp"
    assert _compare(out) == 0
    return out


def test_compare_writes_the_papers_table(default_run):
    r = json.loads((default_run / "results.json").read_text())
    assert [row["key"] for row in r["rows"]] == ["random", "clip", "clip_aug", "simclr", "slip"]
    keys = [c["key"] for c in r["columns"]]
    assert keys == [
        "zeroshot/demo_shapes", "linear/demo_shapes", "knn/demo_shapes",
        "zeroshot/demo_colours", "linear/demo_colours", "knn/demo_colours",
        "retrieval/demo_retrieval",
    ]  # fmt: skip
    shapes = r["columns"][0]
    assert shapes["chance"] == 12.5 and 0 < shapes["majority"] <= 100
    # SimCLR has no text tower: its zero-shot and retrieval cells are "—", not errors.
    assert r["table"]["simclr"]["zeroshot/demo_shapes"]["applies"] is False
    assert r["table"]["simclr"]["retrieval/demo_retrieval"]["applies"] is False
    for row in ("random", "clip", "clip_aug", "slip"):
        cell = r["table"][row]["zeroshot/demo_colours"]
        assert cell["lo"] <= cell["value"] <= cell["hi"]
    for contrast in ("slip-clip", "slip-simclr", "slip-clip_aug"):
        assert all(0 < d["p"] <= 1 for d in r["differences"][contrast].values())
    assert set(r["differences"]["slip-simclr"]) == {"linear/demo_shapes", "knn/demo_shapes", "linear/demo_colours",
                                                    "knn/demo_colours"}  # fmt: skip
    # Every number records its model, checkpoint, dataset and protocol, and per-sample predictions exist for all.
    for rec in r["evaluations"]:
        assert rec["set"] and rec["evaluation"] and "metric" in rec
        assert (rec["checkpoint"] is None) == (rec["row"] == "random")
        with np.load(default_run / rec["predictions"]) as z:
            assert len(z["labels" if "labels" in z.files else "i2t_rank"]) > 0
    assert {rec["evaluation"] for rec in r["evaluations"]} == {"zeroshot", "linear", "knn", "retrieval"}
    # The methods differ only where they must: same data, steps, batch, seed; the paper's lr per objective.
    cfgs = {run["method"]: run["config"] for run in r["runs"].values()}
    assert {c["train"]["steps"] for c in cfgs.values()} == {2}
    assert {c["model"] for c in cfgs.values()} == {"clip_vit_micro", "simclr_vit_micro", "slip_vit_micro"}
    assert (cfgs["clip"]["optim"]["lr"], cfgs["simclr"]["optim"]["lr"], cfgs["slip"]["optim"]["lr"]) == (
        5e-4,
        3.2e-3,
        3e-3,
    )
    assert cfgs["clip_aug"]["data"]["image_view"] == "simclr"
    assert "torch" in r["versions"]
    md = (default_run / "results.md").read_text()
    assert "| SLIP − CLIP |" in md and "| random init |" in md and "| chance / majority |" in md and "—" in md
    assert (default_run / "results.png").stat().st_size > 1000


def test_rerun_skips_everything_finished(default_run, capsys):
    before = (default_run / "results.json").read_text()
    assert _compare(default_run) == 0
    out = capsys.readouterr().out
    assert "compare: training" not in out and "compare: zeroshot" not in out
    assert (default_run / "results.json").read_text() == before


def test_adding_a_seed_reuses_finished_runs_and_reports_spread(default_run, capsys):
    assert _compare(default_run, "--methods", "clip,slip", "--seeds", "0,1") == 0
    out = capsys.readouterr().out
    assert "training clip_seed1" in out and "training clip_seed0" not in out
    r = json.loads((default_run / "results.json").read_text())
    cell = r["table"]["slip"]["linear/demo_colours"]
    assert len(cell["seeds"]) == 2 and cell["std"] is not None
    assert "±" in (default_run / "results.md").read_text()


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "openslip.cli", "compare", "--out-dir", str(out), "--methods", "clip,simclr,slip",
            "--eval-sets", "demo_colours", *SMALL_EVAL, *SMALL, "train.steps=4", "ckpt.every_steps=2"]  # fmt: skip


def test_sigkill_at_any_point_then_rerun_equals_an_uninterrupted_run(tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_command(ref), check=True, capture_output=True, timeout=600)
    markers = [
        "runs/clip_seed0/checkpoints/step_0000002",  # mid-training
        "runs/simclr_seed0/train_done.json",  # between training and evaluation
        "evals/clip_seed0/linear__demo_colours.json",  # between evaluations
    ]
    marker = tmp_path / "run" / random.Random(os.getpid()).choice(markers)
    proc = subprocess.Popen(_command(tmp_path / "run"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), f"the run never reached {marker}"
    rerun = subprocess.run(_command(tmp_path / "run"), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    a = json.loads((ref / "results.json").read_text())
    b = json.loads((tmp_path / "run" / "results.json").read_text())
    assert a == b


def test_labelled_folders_and_a_caption_manifest_as_evaluation_sets(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("red", "blue"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(d / f"{i}.png")
    rows = ["image,caption"] + [f"{s}/red/{i}.png,a red square number {i}" for s in ("train", "test") for i in range(6)]
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    sets = f"{tmp_path / 'test'}@{tmp_path / 'train'},{tmp_path / 'test'},retrieval:{tmp_path / 'caps.csv'}"
    out = tmp_path / "exp"
    assert _compare(out, "--methods", "simclr,slip", "--eval-sets", sets) == 0
    r = json.loads((out / "results.json").read_text())
    table = r["table"]["slip"]
    assert table["linear/test"]["applies"] and table["zeroshot/test"]["applies"]
    assert not table["linear/test_"]["applies"]  # the second set has no train split: no probe
    assert "train split" in table["linear/test_"]["reason"]
    assert table["retrieval/caps"]["applies"]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--methods", "clip,moco"], "unknown method 'moco'"),
        (["--eval-sets", "/no/such/set"], "/no/such/set"),
        (["--seeds", "0,x"], None),  # argparse: exit 2 with usage
        (["model=clip_vit_micro"], "compare derives every method from a SLIP model"),
        (["train.stepz=3"], "unknown key 'train.stepz'"),
        (["nosuch:optim.lr=1"], "unknown method 'nosuch'"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, extra, needle):
    try:
        code = _compare(tmp_path / "exp", *extra)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    if needle:
        assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "exp" / "results.json").exists()


def test_out_dir_of_another_experiment_is_refused(default_run, tmp_path, capsys):
    assert _compare(default_run, "train.steps=3") == 2
    err = capsys.readouterr().err
    assert "holds another experiment" in err and "train.steps" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert _compare(tmp_path / "other") == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_zero_shot_of_an_untrained_text_tower_warns(capsys):
    argv = ["eval", "zeroshot", "--model", "slip_vit_micro", "--pretrained", "none", "--dataset", "demo_colours"]
    with pytest.warns(UserWarning, match="text tower was never trained"):
        assert main([*argv, "-n", "16"]) == 0


def test_finetuning_is_opt_in_and_reported(tmp_path):
    out = tmp_path / "exp"
    argv = ["--methods", "slip", "--eval-sets", "demo_colours", "--finetune", "--finetune-epochs", "1"]
    assert _compare(out, *argv) == 0
    r = json.loads((out / "results.json").read_text())
    assert [c["evaluation"] for c in r["columns"]] == ["zeroshot", "linear", "knn", "finetune"]
    assert r["table"]["slip"]["finetune/demo_colours"]["applies"]
    assert r["table"]["random"]["finetune/demo_colours"]["applies"]  # finetuning from scratch: the floor
