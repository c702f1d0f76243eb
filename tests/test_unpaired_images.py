"""`data.train_images` (docs/TRAINING.md, 'Unpaired images'): image-only sources that only the self-supervised term
reads, through `openslip train`: what the model is given, resume, accumulation, bad settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_utils import final_weights, overrides, read_metrics, rewind

from openslip.cli import main
from openslip.models import SLIP
from openslip.weights import checkpoint as ckpt


@pytest.fixture
def images(tmp_path) -> Path:
    """A flat folder of 12 photos without captions."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    return folder


@pytest.fixture
def rows_seen(monkeypatch):
    """Rows of each input of every `forward_features` call."""
    seen: list[dict[str, int]] = []
    real = SLIP.forward_features

    def spy(self, **kwargs):
        seen.append({k: v.shape[0] for k, v in kwargs.items() if v is not None})
        return real(self, **kwargs)

    monkeypatch.setattr(SLIP, "forward_features", spy)
    return seen


@pytest.mark.parametrize("ssl", ["simclr", "distill"])
def test_the_ssl_term_reads_the_pairs_and_the_unpaired_images(tmp_path, images, rows_seen, ssl):
    extra = [f"data.train_images={images}", "data.image_batch_size=4", "train.steps=2", f"loss.ssl={ssl}"]
    if ssl == "distill":
        extra.append("loss.local_crops=2")
    assert main(["train", *overrides(tmp_path / "run", *extra)]) == 0
    ssl_views = {"view1": 20, "view2": 20} | ({"local": 20} if ssl == "distill" else {})
    assert rows_seen and all(call == {"image": 16, "text": 16, **ssl_views} for call in rows_seen), rows_seen
    last = read_metrics(tmp_path / "run")[-1]
    assert last["data/images/seen"] == 8 and last["data/seen"] == 32  # 2 steps x 4 unpaired, 2 x 16 pairs


def test_resume_continues_the_unpaired_images_exactly(tmp_path, images):
    args = [f"data.train_images={images}", "data.image_batch_size=4", "train.steps=4", "ckpt.every_steps=2"]
    args += ["ckpt.keep_last=5"]
    run = tmp_path / "run"
    assert main(["train", *overrides(run, *args)]) == 0
    uninterrupted = final_weights(run)
    state = ckpt.load_train_state(run / "checkpoints" / "step_0000004")
    assert state["images_loader"]["position"] == 1  # 12 images, 4 per step: one batch into the second epoch
    rewind(run, "step_0000004", "step_0000002")
    assert main(["train", *overrides(run, *args)]) == 0
    resumed = final_weights(run)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_accumulation_with_unpaired_images_is_exact(tmp_path, images):
    args = [f"data.train_images={images}", "data.image_batch_size=4", "train.steps=2"]
    assert main(["train", *overrides(tmp_path / "one", *args)]) == 0
    assert main(["train", *overrides(tmp_path / "acc", *args, "train.accum_steps=4")]) == 0
    one, acc = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "acc")
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in acc], rel=1e-4)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["model=clip_vit_micro", "data.train_images=IMAGES"], "which this run does not train"),
        (["data.image_batch_size=4"], "data.image_batch_size sizes the unpaired images of data.train_images"),
        (["data.train_images=[]"], "data.train_images=[] names no images"),
        (["data.train_images=MISSING"], "data.train_images: no such file or directory"),
        (["data.train_images=IMAGES", "data.image_batch_size=0"], "data.image_batch_size=0 must be > 0"),
    ],
)
def test_bad_unpaired_settings_are_one_line(tmp_path, capsys, images, args, needle):
    args = [a.replace("IMAGES", str(images)).replace("MISSING", str(tmp_path / "nope")) for a in args]
    assert main(["train", *overrides(tmp_path / "run", "train.steps=1", *args)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
