"""The next batch prepared while the step runs (openslip.train.ahead; CUDA only, on a side stream). Its bookkeeping
is device-independent, so it is checked here on the CPU by letting the CPU prepare ahead too: the batch taken
early must not move a checkpoint's loader state, and the views must be those of (seed, step)."""

from __future__ import annotations

import shutil

import pytest
import torch
from train_utils import final_weights, overrides

import openslip.train.ahead as ahead
from openslip.cli import main

EXTRA = ("data.augment=device", "ckpt.every_steps=2", "ckpt.keep_last=5")


def _assert_identical(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_prepared_ahead_then_resumed_is_bit_exact(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    assert main(["train", *overrides(plain, *EXTRA, "train.steps=4")]) == 0
    monkeypatch.setattr(ahead, "AHEAD_DEVICES", ("cuda", "cpu"))
    straight = tmp_path / "straight"
    assert main(["train", *overrides(straight, *EXTRA, "train.steps=4")]) == 0
    _assert_identical(final_weights(plain), final_weights(straight))
    # the step-2 checkpoint was written with batch 3 already taken and prepared: it holds the loader state from
    # before it, so a run resumed there (the later checkpoint removed, as if killed) reads batch 3 again
    checkpoints = straight / "checkpoints"
    shutil.rmtree(checkpoints / "step_0000004")
    (checkpoints / "latest").write_text("step_0000002\n")
    assert main(["train", *overrides(straight, *EXTRA, "train.steps=4", "resume=auto")]) == 0
    _assert_identical(final_weights(plain), final_weights(straight))


def test_no_batch_is_taken_beyond_the_last_step() -> None:
    taken = []

    def batches():
        for i in range(10):
            taken.append(i)
            yield {"id": torch.tensor([i])}

    class Data:
        held_state = None
        prepared: list[int] = []

        def hold(self):
            self.held_state = {"taken": len(taken)}

        def release(self):
            self.held_state = None

        def prepare(self, batch, step, device, stream):
            self.prepared.append(step)

    data = Data()
    saved = ahead.AHEAD_DEVICES
    ahead.AHEAD_DEVICES = ("cpu",)
    try:
        out = list(ahead.prepared_ahead(batches(), data, torch.device("cpu"), 5, 8))
    finally:
        ahead.AHEAD_DEVICES = saved
    assert [int(b["id"]) for b in out] == [0, 1, 2] and taken == [0, 1, 2]
    assert data.prepared == [5, 6, 7] and data.held_state is None


def test_prepared_ahead_holds_the_unpaired_images_loader_too(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With data.train_images the batch taken ahead also takes the unpaired images' next batch: the step-2 checkpoint
    holds both loaders' states as a run without preparing ahead writes them, and resuming there is exact (here with
    data.decode=device too: the JPEG bytes decoded in the training process)."""
    import numpy as np
    from PIL import Image
    from train_utils import rewind

    from openslip.weights import checkpoint as ckpt

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    args = [*EXTRA, f"data.train_images={folder}", "data.image_batch_size=4", "data.decode=device", "train.steps=4"]
    plain, early = tmp_path / "plain", tmp_path / "early"
    assert main(["train", *overrides(plain, *args)]) == 0
    monkeypatch.setattr(ahead, "AHEAD_DEVICES", ("cuda", "cpu"))
    assert main(["train", *overrides(early, *args)]) == 0
    _assert_identical(final_weights(plain), final_weights(early))
    states = [ckpt.load_train_state(run / "checkpoints" / "step_0000002") for run in (plain, early)]
    for key in ("loader", "images_loader"):
        assert states[0][key] == states[1][key], key
    rewind(early, "step_0000004", "step_0000002")
    assert main(["train", *overrides(early, *args)]) == 0
    _assert_identical(final_weights(plain), final_weights(early))
