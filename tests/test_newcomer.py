"""What a newcomer hit (issue: "What we ship tells the truth", item 7) and the threads / progress settings (item 5):
each case through the CLI or the public API, the way a user meets it."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from openslip.cli import main
from tests.train_utils import overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(tmp_path: Path, *extra: str) -> int:
    return main(["train", *overrides(tmp_path / "run", "train.steps=3", *extra)])


# --- threads and progress ----------------------------------------------------------------------------------------


def test_train_threads_sets_torch_threads(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OPENSLIP_NO_TUNE", "1")  # train.threads applies even when the runtime tuning is off
    torch.set_num_threads(2)
    assert _train(tmp_path, "train.threads=1") == 0
    assert torch.get_num_threads() == 1


def test_train_threads_is_checked():
    assert main(["train", "train.threads=-1"]) == 2


def test_load_above_the_cores_warns_in_one_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(os, "getloadavg", lambda: (1000.0, 0.0, 0.0))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this process's threads; report 2, then 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert _train(tmp_path) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "1-minute load" in x]
    assert len(lines) == 1 and "train.threads=1" in lines[0], lines
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert _train(tmp_path / "one") == 0  # already one thread: no advice to set it
    lines = [x for x in capsys.readouterr().err.splitlines() if "1-minute load" in x]
    assert len(lines) == 1 and "train.threads" not in lines[0], lines


def test_progress_prints_by_time_as_well_as_by_steps(tmp_path: Path, capsys):
    # print_every=100 steps: by steps only the last step would print; a tiny interval prints at every step
    assert _train(tmp_path, "train.log_every=100", "train.print_every=100", "train.print_every_s=1e-9") == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("step ") and "/3 (" in x]
    assert [x.split()[1] for x in lines] == ["1/3", "2/3", "3/3"], lines


def test_progress_by_time_uses_the_clock(tmp_path: Path, capsys):
    from openslip.train.run_log import RunLogger

    now = [0.0]
    log = RunLogger(tmp_path, enabled=True, total_steps=100, start_step=0, progress=False, clock=lambda: now[0])
    log.progress(1, {"loss": 1.0})
    now[0] = 31.0
    log.progress(2, {"loss": 1.0})
    log.progress(3, {"loss": 1.0})  # no time passed since the last line, and not a tenth of the run
    log.close()
    assert [x.split()[1] for x in capsys.readouterr().err.splitlines()] == ["2/100"]


def test_compare_passes_train_threads_through():
    from openslip.compare.experiment import CompareConfig
    from openslip.compare.methods import METHODS

    exp = CompareConfig(methods=("clip", "slip"), overrides=("train.threads=1",))
    for name in exp.methods:
        assert exp.run_config(METHODS.get(name), 0).train.threads == 1


# --- silent cases ------------------------------------------------------------------------------------------------


def test_start_line_shows_the_data_and_its_size(tmp_path: Path, capsys):
    assert _train(tmp_path, "data.demo_size=640") == 0
    start = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("training "))
    assert "data demo (640 samples)" in start, start


def test_warmup_longer_than_the_run_warns(tmp_path: Path, capsys):
    assert _train(tmp_path, "optim.warmup_steps=30") == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "optim.warmup_steps=30" in x]
    assert len(lines) == 1 and "never reaches" in lines[0], lines


def test_repeated_override_key_is_refused_naming_the_quoting(capsys):
    # what bash makes of an unquoted data.train=/d/shard-{000000..000002}.tar
    argv = ["train", *(f"data.train=/d/shard-00000{i}.tar" for i in range(3))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.train is given twice" in err[0] and "quote" in err[0], err


def test_repeated_key_in_compare_is_refused(capsys):
    assert main(["compare", "train.steps=5", "train.steps=6"]) == 2
    assert "train.steps is given twice" in capsys.readouterr().err


def _image_tree(root: Path, classes: list[str], per_class: int = 3) -> Path:
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), (40 * c, 10 * i, 0)).save(root / name / f"{i}.png")
    return root


def test_zero_shot_on_numbered_classes_warns_naming_classnames(tmp_path: Path, capsys):
    root = _image_tree(tmp_path / "set", ["0", "1"])
    argv = ["eval", "zeroshot", "--model", "slip_vit_micro", "--pretrained", "none", "--dataset", str(root)]
    with pytest.warns(UserWarning, match=r"class names are numbers .*--classnames"):
        assert main(argv) == 0
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*never trained")
        assert main([*argv, "--classnames", str(names)]) == 0


def test_knn_k_larger_than_the_train_set_is_clamped_and_said(tmp_path: Path, capsys):
    train = _image_tree(tmp_path / "train", ["cat", "dog"])
    test = _image_tree(tmp_path / "test", ["cat", "dog"])
    argv = ["eval", "knn", "--model", "slip_vit_micro", "--pretrained", "none", "--dataset", str(test)]
    assert main([*argv, "--train", str(train), "knn_k=50", "--output", str(tmp_path / "m.json")]) == 0
    captured = capsys.readouterr()
    assert "openslip eval knn: note: knn_k=50 is more than the 6 train images: using k=6" in captured.err
    assert "kNN (k=6" in captured.out
    assert json.loads((tmp_path / "m.json").read_text())["k"] == 6


# --- open_clip habits: one-line answers naming the openslip way --------------------------------------------------


def test_create_model_with_pretrained_names_load_model():
    import openslip

    with pytest.raises(TypeError, match=r"openslip\.load_model\(PATH\)"):
        openslip.create_model("slip_vit_micro", pretrained="laion2b")


def test_get_tokenizer_with_a_model_name_says_it_takes_none():
    import openslip

    with pytest.raises(TypeError, match=r"takes no model name .*openslip\.get_tokenizer\(\)"):
        openslip.get_tokenizer("ViT-B-32")


def test_encode_text_of_strings_and_encode_image_of_one_image():
    import openslip

    model = openslip.create_model("slip_vit_micro").eval()
    with pytest.raises(TypeError, match=r"tokenize first"):
        model.encode_text(["a dog"])
    size = model.cfg.vision.image_size
    with pytest.raises(ValueError, match=r"x\[None\]"):
        model.encode_image(torch.zeros(3, size, size))
    tok = openslip.get_tokenizer()
    with torch.no_grad():  # the ways the messages name do work
        assert model.encode_text(tok(["a dog"])).shape[0] == 1
        assert model.encode_image(torch.zeros(3, size, size)[None]).shape[0] == 1


# --- dead ends -------------------------------------------------------------------------------------------------


def _one_line(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    return err[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--steps", "100"], "write `train.steps=100`"),
        (["train", "--batch-size=8", "train.steps=3"], "write `train.batch_size=8`"),
        (["compare", "--lr", "1e-3"], "write `optim.lr=1e-3`"),
    ],
)
def test_an_option_that_is_a_config_key_names_the_override(capsys, argv, expected):
    assert expected in _one_line(capsys, argv)


def test_comma_list_without_brackets_gets_the_bracket_hint(capsys):
    assert "write eval.sets=[zeroshot:demo_shapes,zeroshot:demo_colours]" in _one_line(
        capsys, ["train", "eval.sets=zeroshot:demo_shapes,zeroshot:demo_colours"]
    )


def test_data_inspect_with_every_file_missing_fails_naming_a_path_and_root(tmp_path: Path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,caption\nimgs/a.jpg,a cat\nimgs/b.jpg,a dog\n")
    try:
        code = main(["data", "inspect", str(manifest)])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "a.jpg" in err[-1] and "--root" in err[-1], err


def test_timm_export_given_to_model_is_named_not_broken(tmp_path: Path, capsys):
    import openslip
    from openslip.weights.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ck", openslip.create_model("slip_vit_micro"))
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "timm"), "--format", "timm"]) == 0
    capsys.readouterr()
    line = _one_line(capsys, ["eval", "zeroshot", "--model", str(tmp_path / "timm"), "--dataset", "demo_shapes"])
    assert "is a timm export" in line and "broken" not in line, line


def test_open_clip_file_without_activation_names_convert(tmp_path: Path, capsys):
    from tests.clip_layout_utils import clip_state_dict

    torch.save(clip_state_dict(), tmp_path / "weights.pt")  # open_clip names, no activation recorded
    argv = ["eval", "zeroshot", "--model", str(tmp_path / "weights.pt"), "--dataset", "demo_shapes"]
    line = _one_line(capsys, argv)
    assert "openslip convert" in line and "--activation gelu" in line and "(CLI: --activation)" not in line, line


# --- clumsy ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "ssl", "clip"), [("clip_vit_micro", 0.0, 1.0), ("simclr_vit_micro", 1.0, 0.0), ("slip_vit_micro", 1, 1)]
)
def test_the_model_kind_sets_its_loss_weights(capsys, model, ssl, clip):
    assert main(["train", f"model={model}", "--print-config"]) == 0
    loss = yaml.safe_load(capsys.readouterr().out)["loss"]
    assert (loss["ssl_scale"], loss["clip_scale"]) == (ssl, clip)


def test_explicit_loss_weights_of_a_baseline_still_work(capsys):
    assert main(["train", "model=clip_vit_micro", "loss.ssl_scale=0", "--print-config"]) == 0
    assert main(["train", "model=simclr_vit_micro", "loss.clip_scale=0", "--print-config"]) == 0
    assert "has no SimCLR head" in _one_line(capsys, ["train", "model=clip_vit_micro", "loss.ssl_scale=1"])


def test_clip_baseline_trains_with_the_model_alone(tmp_path: Path):
    assert main(["train", *overrides(tmp_path / "run", "model=clip_vit_micro", "train.steps=2")]) == 0


def test_batch_larger_than_the_dataset_is_refused_in_one_line(tmp_path: Path, capsys):
    from PIL import Image

    rows = ["image,caption"]
    for i in range(6):
        Image.new("RGB", (32, 32), (30 * i, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a red square number {i}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    argv = ["train", *overrides(tmp_path / "run", f"data.train={tmp_path / 'm.csv'}", "train.batch_size=8")]
    line = _one_line(capsys, argv)
    assert "fewer than the batch size 8" in line and "train.batch_size" in line, line
