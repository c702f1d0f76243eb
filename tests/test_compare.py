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
import yaml
from PIL import Image
from train_utils import merged

from openslip.cli import main

# The default experiment, shrunk: micro models, 2 steps, small demo sets.
SMALL = ["model=slip_vit_micro", "train.steps=2", "train.batch_size=8", "data.num_workers=0", "train.progress=false"]
SMALL_EVAL = ["--num-test", "32", "--num-train", "64", "--bootstrap", "100"]


def _compare(out: Path, *extra: str) -> int:
    return main(["compare", "--out-dir", str(out), *SMALL_EVAL, *merged(*SMALL, *extra)])


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
    # The methods differ only where they must: same data, steps, batch, seed, and on the demo world (not a paper
    # recipe) the same lr and wd: the recipe's, --hparams shared by default.
    cfgs = {run["method"]: run["config"] for run in r["runs"].values()}
    assert {c["train"]["steps"] for c in cfgs.values()} == {2}
    assert {c["model"] for c in cfgs.values()} == {"clip_vit_micro", "simclr_vit_micro", "slip_vit_micro"}
    assert {(c["optim"]["lr"], c["optim"]["wd"]) for c in cfgs.values()} == {(2e-3, 0.1)}
    assert r["hparams"]["mode"] == "shared" and r["settings"]["hparams"] == "shared"
    assert [(row["key"], row["lr"], row["wd"]) for row in r["rows"]][:2] == [
        ("random", None, None),
        ("clip", 2e-3, 0.1),
    ]
    assert cfgs["clip_aug"]["data"]["image_view"] == "simclr"
    assert "torch" in r["versions"]
    # one seed: the intervals are said to cover the test images only
    assert r["statistics"]["seeds"] == 1 and r["statistics"]["intervals"] == "95%, over test images"
    md = (default_run / "results.md").read_text()
    assert "| SLIP − CLIP |" in md and "| random init |" in md and "| chance / majority |" in md and "—" in md
    assert "1 seed (0)" in md and "over test images only" in md
    assert "Optimiser settings: --hparams shared, one lr and wd for every method." in md
    assert "| method | lr / wd |" in md and "| CLIP | 0.002 / 0.1 |" in md
    # every cell's prompts and metric: the demo task's own templates
    colours = next(c for c in r["columns"] if c["key"] == "zeroshot/demo_colours")
    assert colours["metric"] == "top1" and colours["prompts_from"] == "demo task demo_colours"
    assert colours["templates"] and len(colours["classnames"]) == 8
    assert all(rec["prompts"]["templates"] for rec in r["evaluations"] if rec["evaluation"] == "zeroshot")
    assert (default_run / "results.png").stat().st_size > 1000


README = Path(__file__).resolve().parents[1] / "README.md"


def _first_table(text: str) -> list[list[str]]:
    """The cells of the first markdown table in `text`, row by row (the separator row left out)."""
    rows, started = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            started = True
            if not set(line) <= set("|-: "):
                rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif started:
            break
    return rows


def test_readmes_compare_table_has_the_form_compare_writes(default_run):
    """README shows a results.md of the default `openslip compare`: the same columns and the same rows, in order
    (the values are the measured ones; this run is shrunk)."""
    section = README.read_text(encoding="utf-8").split("## Reproduce the paper's comparison", 1)[1]
    documented = _first_table(section.split("\n## ", 1)[0])
    written = _first_table((default_run / "results.md").read_text(encoding="utf-8"))
    assert documented[0] == written[0]  # method, lr / wd, then (evaluation, set, metric) columns
    assert [row[0] for row in documented] == [row[0] for row in written]
    assert all(len(row) == len(written[0]) for row in documented)


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
    assert len(cell["seeds"]) == 2 and cell["std"] is not None and cell["over"] == "images+seeds"
    assert r["differences"]["slip-clip"]["linear/demo_colours"]["seeds"] == 2
    assert r["statistics"]["seeds"] == 2 and "seeds" in r["statistics"]["intervals"]
    md = (default_run / "results.md").read_text()
    assert "±" in md and "2 seeds (0, 1)" in md and "interval over test images and seeds" in md


def _command(out: Path) -> list[str]:
    settings = merged(*SMALL, "train.steps=4", "ckpt.every_steps=2")
    return [sys.executable, "-m", "openslip.cli", "compare", "--out-dir", str(out), "--methods", "clip,simclr,slip",
            "--eval-sets", "demo_colours", *SMALL_EVAL, *settings]  # fmt: skip


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
    # one test folder in two sets: their columns are told apart by the whole spec
    assert [c["set"] for c in r["columns"] if c["evaluation"] == "zeroshot"] == ["test@train", "test"]
    assert table["linear/test_train"]["applies"] and table["zeroshot/test_train"]["applies"]
    assert not table["linear/test"]["applies"]  # the second set has no train split: no probe
    assert "train split" in table["linear/test"]["reason"]
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


def test_fewshot_is_opt_in_and_reported(tmp_path):
    """`--fewshot`: the registered few-shot probe gets its column, its score given back by its saved outcomes."""
    out = tmp_path / "exp"
    argv = ["--methods", "slip", "--eval-sets", "demo_colours", "--fewshot", "--num-train", "200"]  # 25 per class
    assert _compare(out, *argv) == 0
    r = json.loads((out / "results.json").read_text())
    assert [c["evaluation"] for c in r["columns"]] == ["zeroshot", "linear", "knn", "fewshot"]
    cell = r["table"]["slip"]["fewshot/demo_colours"]
    record = next(x for x in r["evaluations"] if x["row"] == "slip" and x["evaluation"] == "fewshot")
    assert cell["applies"] and cell["value"] == pytest.approx(record["score"])
    assert record["metrics"]["shots"] == 25 and len(record["metrics"]["25shot_seeds"]) == 3


# --- optimiser settings, prompts, subsamples, column titles (issue: a fair and seed-aware compare) ---------------

TWO = ["--methods", "clip,slip", "--eval-sets", "demo_colours"]


def test_paper_settings_per_objective_and_another_mode_is_refused(tmp_path, capsys):
    out = tmp_path / "exp"
    assert _compare(out, *TWO, "--hparams", "paper") == 0
    r = json.loads((out / "results.json").read_text())
    assert r["hparams"]["mode"] == "paper"
    assert {row["key"]: (row["lr"], row["wd"]) for row in r["rows"]} == {
        "random": (None, None),
        "clip": (5e-4, 0.5),
        "slip": (3e-3, 0.1),
    }
    md = (out / "results.md").read_text()
    assert "--hparams paper" in md and "| CLIP | 0.0005 / 0.5 |" in md and "| SLIP | 0.003 / 0.1 |" in md
    capsys.readouterr()
    # the same out_dir with other optimiser settings: one line naming the setting
    assert _compare(out, *TWO, "--hparams", "shared") == 2
    err = capsys.readouterr().err.strip()
    assert "holds another experiment" in err and "hparams" in err and len(err.splitlines()) == 1
    # the paper's per-objective values and one lr for all contradict each other
    assert _compare(tmp_path / "exp2", *TWO, "--hparams", "paper", "optim.lr=1e-3") == 2
    assert "--hparams paper gives each method its paper optim.lr" in capsys.readouterr().err


def test_shared_settings_take_the_users_lr_and_wd(tmp_path):
    out = tmp_path / "exp"
    assert _compare(out, *TWO, "--hparams", "shared", "optim.lr=1e-3", "optim.wd=0.2", "--seeds", "0,1") == 0
    r = json.loads((out / "results.json").read_text())
    assert {(run["lr"], run["wd"]) for run in r["runs"].values()} == {(1e-3, 0.2)} and len(r["runs"]) == 4
    assert r["rows"][1]["lr"] == 1e-3 and r["rows"][2]["wd"] == 0.2
    md = (out / "results.md").read_text()
    assert "--hparams shared" in md and "| SLIP | 0.001 / 0.2 |" in md and "2 seeds (0, 1)" in md


def test_sweep_chooses_each_methods_lr_on_a_validation_split_of_the_train_side(tmp_path, capsys):
    out = tmp_path / "exp"
    argv = ["--methods", "clip,simclr", "--eval-sets", "demo_colours", "--hparams", "sweep", "--sweep-lr", "0.5,2"]
    assert _compare(out, *argv) == 0
    r = json.loads((out / "results.json").read_text())
    sweep = r["hparams"]["sweep"]
    assert sweep["lr_factors"] == [0.5, 2.0] and "train split of demo_colours" in sweep["criterion"]
    for method in ("clip", "simclr"):
        points = sweep["points"][method]
        assert [p["lr"] for p in points] == [1e-3, 4e-3] and sum(p["chosen"] for p in points) == 1
        chosen = next(p for p in points if p["chosen"])
        assert max(p["validation_mean"] for p in points) == chosen["validation_mean"]
        row = next(row for row in r["rows"] if row["key"] == method)
        assert (row["lr"], row["run"]) == (chosen["lr"], chosen["run"])
        # every grid point was trained and scored on the validation split; only the chosen one on the test sets
        for p in points:
            assert (out / "runs" / f"{p['run']}_seed0" / "train_done.json").is_file()
            assert (out / "evals" / f"{p['run']}_seed0" / "select__demo_colours.json").is_file()
            assert (out / "evals" / f"{p['run']}_seed0" / "knn__demo_colours.json").is_file() == p["chosen"]
    # the validation part is a fifth of the probe's train split (64 images): 13, never the test images
    assert "(13 images; the other 51 are the neighbours)" in sweep["criterion"]
    assert {run["chosen"] for run in r["runs"].values()} == {True, False} and len(r["runs"]) == 4
    assert "--hparams sweep" in (out / "results.md").read_text()
    capsys.readouterr()
    assert _compare(out, *argv) == 0  # resumable: nothing is trained or scored again
    assert "compare: training" not in capsys.readouterr().out
    # a sweep needs a probe set to choose on; a grid without the sweep is a mistake
    assert _compare(tmp_path / "exp2", *argv[:2], "--eval-sets", "demo", "--hparams", "sweep") == 2
    assert "TEST@TRAIN" in capsys.readouterr().err
    assert _compare(tmp_path / "exp3", *TWO, "--sweep-lr", "1,2") == 2
    assert "add --hparams sweep" in capsys.readouterr().err


def _folders(root: Path, classes: list[str], per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_a_sets_own_prompts_and_metric_and_a_subsample_of_its_folders(tmp_path):
    test = _folders(tmp_path / "test", ["c0", "c1"], per_class=10)
    train = _folders(tmp_path / "train", ["c0", "c1"], per_class=20, seed=1)
    prompts = tmp_path / "prompts.json"
    doc = {"classnames": ["red square", "blue circle"], "templates": ["a drawing of a {}."], "metric": "mean_per_class"}
    prompts.write_text(json.dumps(doc))
    out = tmp_path / "exp"
    argv = ["--methods", "slip", "--eval-sets", f"{test}@{train}#{prompts}", "--num-test", "8", "--num-train", "16"]
    assert main(["compare", "--out-dir", str(out), "--bootstrap", "100", *SMALL, *argv]) == 0
    r = json.loads((out / "results.json").read_text())
    col = r["columns"][0]
    assert col["key"] == "zeroshot/test" and col["metric"] == "mean_per_class"
    assert col["classnames"] == ["red square", "blue circle"] and col["templates"] == ["a drawing of a {}."]
    assert col["prompts_from"] == f"file {prompts}"
    for rec in r["evaluations"]:
        assert rec["metric"] == "mean_per_class"
        if rec["evaluation"] == "zeroshot":
            assert rec["prompts"]["templates"] == ["a drawing of a {}."]
        with np.load(out / rec["predictions"]) as z:
            assert len(z["labels"]) == 8  # --num-test 8 of the folder's 20 images
        if rec["evaluation"] == "knn":
            assert rec["metrics"]["num_train"] == 16  # --num-train 16 of 40
    assert "(mean_per_class)" in (out / "results.md").read_text()


def test_sets_of_one_file_name_get_distinct_columns(tmp_path):
    rng = np.random.default_rng(0)
    specs = []
    for name in ("pets", "flowers"):
        rows = ["image,label"]
        for i in range(8):
            path = tmp_path / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(path)
            rows.append(f"{path},{'cat' if i % 2 else 'dog'}")
        (tmp_path / name / "test.csv").write_text("\n".join(rows) + "\n")
        specs.append(str(tmp_path / name / "test.csv"))
    out = tmp_path / "exp"
    assert _compare(out, "--methods", "clip", "--eval-sets", ",".join(specs)) == 0
    r = json.loads((out / "results.json").read_text())
    zeroshot = [c for c in r["columns"] if c["evaluation"] == "zeroshot"]
    assert [c["set"] for c in zeroshot] == ["pets/test.csv", "flowers/test.csv"]
    assert [c["key"] for c in zeroshot] == ["zeroshot/pets_test.csv", "zeroshot/flowers_test.csv"]
    md = (out / "results.md").read_text()
    assert "zero-shot pets/test.csv (top1)" in md and "zero-shot flowers/test.csv (top1)" in md


def test_a_catalog_set_takes_the_catalogs_prompts_and_metric(tmp_path):
    test = _folders(tmp_path / "memes" / "test", ["0", "1"], per_class=6)  # index folders, in the catalog's order
    train = _folders(tmp_path / "memes" / "train", ["0", "1"], per_class=8, seed=1)
    out = tmp_path / "exp"
    assert _compare(out, "--methods", "clip", "--eval-sets", f"hateful_memes:{test}@{train}") == 0
    r = json.loads((out / "results.json").read_text())
    col = r["columns"][0]
    assert col["metric"] == "roc_auc" and col["prompts_from"] == "catalog hateful_memes"
    assert col["classnames"] == ["meme", "hatespeech meme"] and len(col["templates"]) >= 1


def test_the_default_settings_are_the_papers_only_for_a_paper_recipe():
    from openslip.compare import CompareConfig
    from openslip.compare.methods import METHODS

    paper = CompareConfig(overrides=("recipe=slip_vit_b16_yfcc15m",))
    assert paper.mode() == "paper"
    assert paper.run_config(METHODS.get("clip"), 0).optim.lr == 5e-4
    assert CompareConfig(overrides=("recipe=slip_vit_b16_yfcc15m", "optim.lr=1e-3")).mode() == "shared"
    assert CompareConfig().mode() == "shared"
    assert CompareConfig(overrides=("data.train=/data/train.csv",)).mode() == "shared"  # the custom recipe


def test_one_colour_per_method_in_both_panels(default_run, monkeypatch):
    import matplotlib.axes

    colours: dict[str, set] = {}
    bar, plot = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.plot

    def spy_bar(self, *args, **kwargs):
        colours.setdefault(kwargs.get("label"), set()).add(kwargs.get("color"))
        return bar(self, *args, **kwargs)

    def spy_plot(self, *args, **kwargs):
        colours.setdefault(kwargs.get("label"), set()).add(kwargs.get("color"))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy_bar)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy_plot)
    assert _compare(default_run) == 0  # nothing to run: the reports are rebuilt
    methods = ["CLIP", "CLIP + SimCLR aug.", "SimCLR", "SLIP"]
    assert all(len(colours[m]) == 1 for m in methods), colours
    assert len({next(iter(colours[m])) for m in [*methods, "random init"]}) == 5


def test_the_sigmoid_methods_train_with_the_sigmoid_loss(tmp_path):
    """siglip and slip_sigmoid (docs/OBJECTIVES.md): loss.contrastive=sigmoid over the clip / slip methods."""
    out = tmp_path / "exp"
    assert _compare(out, "--methods", "siglip,slip_sigmoid", "--eval-sets", "demo_colours") == 0
    r = json.loads((out / "results.json").read_text())
    assert [row["key"] for row in r["rows"]] == ["random", "siglip", "slip_sigmoid"]
    for method in ("siglip", "slip_sigmoid"):
        cfg = yaml.safe_load((out / "runs" / f"{method}_seed0" / "config.yaml").read_text())
        assert cfg["loss"]["contrastive"] == "sigmoid"


def test_the_distillation_methods_train_with_an_ema_teacher(tmp_path):
    """clip_distill and siglip_distill (docs/OBJECTIVES.md): loss.ssl=distill over the slip method, softmax or
    sigmoid; the distillation head and its local crops are trained and logged like any SSL term."""
    out = tmp_path / "exp"
    args = ("--methods", "clip_distill,siglip_distill", "--eval-sets", "demo_colours", "loss.local_crops=2")
    assert _compare(out, *args) == 0
    r = json.loads((out / "results.json").read_text())
    assert [row["key"] for row in r["rows"]] == ["random", "clip_distill", "siglip_distill"]
    for method, contrastive in (("clip_distill", "softmax"), ("siglip_distill", "sigmoid")):
        run = out / "runs" / f"{method}_seed0"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert (cfg["loss"]["ssl"], cfg["loss"]["contrastive"], cfg["loss"]["local_crops"]) == (
            "distill",
            contrastive,
            2,
        )
        last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line][-1]
        assert {"ssl_loss", "teacher_entropy", "teacher_momentum"} <= set(last)
