"""Non-finite is never saved: a diverging run stops with one line (never the SVD's LinAlgError from ssl_rank, never
"done"), no checkpoint holding inf / NaN is written, and a weights file whose float data was relabelled as integers
is refused at load."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_utils import overrides

from openslip.cli import main
from openslip.errors import CheckpointError
from openslip.losses import effective_rank
from openslip.models import create_model
from openslip.weights import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")  # micro runs on a shared 2-core CPU (conftest.py)

MODELS = {
    "slip": ["model=slip_vit_micro"],
    "simclr": ["model=simclr_vit_micro", "loss.clip_scale=0"],
    "clip": ["model=clip_vit_micro", "loss.ssl_scale=0"],
}
# optim.lr=1e300: the first update with a non-zero rate (step 1 after the warm-up's 0) overflows the weights
WHEN = {
    # the check before a save: a checkpoint is due right after the update that overflowed them
    "save": ["train.steps=3", "ckpt.every_steps=2", "train.log_every=100"],
    # the check at a log step, with no checkpoint due
    "log": ["train.steps=3", "ckpt.every_steps=100", "train.log_every=2"],
    # no weight check due: the next forward pass gives a NaN loss (and NaN SimCLR features for ssl_rank's SVD)
    "loss": ["train.steps=3", "ckpt.every_steps=100", "train.log_every=100"],
}


def _all_finite(run: Path) -> bool:
    weights = sorted((run / "checkpoints").glob("step_*/model.safetensors"))
    return all(bool(torch.isfinite(t).all()) for w in weights for t in load_file(str(w)).values())


@pytest.mark.parametrize("when", sorted(WHEN))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_huge_learning_rate_stops_in_one_line_and_saves_nothing_non_finite(tmp_path, capsys, model, when):
    run = tmp_path / "run"
    argv = ["train", *overrides(run, *MODELS[model], *WHEN[when], "optim.lr=1e300")]
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err[-1].startswith("openslip train: error: training: non-finite"), err[-1]
    assert "Traceback" not in captured.err and "done" not in captured.out
    expected = "non-finite loss nan at step 2" if when == "loss" else "non-finite weights (inf / NaN) after step 2"
    assert expected in err[-1] and "no checkpoint was saved yet" in err[-1], err[-1]
    assert not list((run / "checkpoints").glob("step_*")) if (run / "checkpoints").exists() else True
    assert _all_finite(run)


def test_the_last_good_checkpoint_stays_the_newest(tmp_path, capsys):
    """A run that diverges after a good checkpoint names it, and it stays the one `latest` points at."""
    run = tmp_path / "run"
    assert main(["train", *overrides(run, "train.steps=2", "ckpt.every_steps=2")]) == 0
    capsys.readouterr()
    argv = ["train", *overrides(run, "train.steps=4", "ckpt.every_steps=1", "optim.lr=1e300", "resume_force=true")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    good = run / "checkpoints" / "step_0000002"
    assert "non-finite weights (inf / NaN) after step 3" in err and f"the last good checkpoint is {good}" in err, err
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000002"]


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    model = create_model("clip_vit_micro")
    with torch.no_grad():
        model.visual.cls_token.fill_(float("inf"))
    with pytest.raises(CheckpointError, match=r"not saved: non-finite values \(inf / NaN\) in visual.cls_token"):
        ckpt.save_model(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_effective_rank_of_non_finite_or_huge_features_is_not_an_svd_error():
    z = torch.randn(16, 32)
    assert 1 <= effective_rank(z).item() <= 16
    assert effective_rank(z * 1e30).item() == pytest.approx(effective_rank(z).item(), rel=1e-4)  # overflows unscaled
    for bad in (float("nan"), float("inf")):
        z_bad = z.clone()
        z_bad[3, 5] = bad
        assert torch.isnan(effective_rank(z_bad))


def _relabel(src: Path, dst: Path, new_dtype: str) -> str:
    """Copy a safetensors file with the first F32 tensor's header entry saying `new_dtype` (same byte width)."""
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    header[name]["dtype"] = new_dtype
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return name


def test_float_data_relabelled_as_integers_is_refused_in_one_line(tmp_path, capsys):
    """Before, the integers' values (around 1e9) were copied into the float parameters without a word."""
    model = create_model("slip_vit_micro")
    saved = ckpt.save_model(model, tmp_path / "ckpt") / "model.safetensors"
    lone = tmp_path / "relabelled.safetensors"  # self-describing: its header carries the config
    name = _relabel(saved, lone, "I32")
    capsys.readouterr()
    argv = ["eval", "zeroshot", "--model", str(lone), "--dataset", "demo_colours", "-n", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-floating data for floating parameters" in err[0] and name in err[0], err


def test_half_precision_exports_still_load(tmp_path):
    """Float data of another width is fine: a bf16 export loads, in bf16."""
    from safetensors.torch import save_file

    model = create_model("clip_vit_micro")
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "bf16.safetensors"
    save_file(sd, str(path))
    loaded = ckpt.load_model(path, model_name="clip_vit_micro")
    assert loaded.visual.cls_token.dtype == torch.bfloat16
