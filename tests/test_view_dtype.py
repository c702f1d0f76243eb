"""data.augment=cpu under train.precision=bf16 / fp16: the workers send the views in autocast's dtype.

Exact, not approximate: the patch embedding is a view's first use, and autocast rounds its input to that dtype, so
the run must be the same to the bit as one whose views travel in float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import openslip.train.data as train_data
from openslip.cli import main
from openslip.train.config import Config
from tests.train_utils import final_weights, overrides


@pytest.mark.filterwarnings("ignore:train.precision=bf16 has no fast kernels:UserWarning")
def test_bf16_views_give_the_float32_views_run_to_the_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("data.augment=cpu", "train.precision=bf16", "train.steps=2", "data.num_workers=1")
    seen: list[torch.dtype] = []
    original = train_data.views_travel_as

    def recording(cfg: Config) -> torch.dtype:
        seen.append(original(cfg))
        return seen[-1]

    monkeypatch.setattr(train_data, "views_travel_as", recording)
    assert main(["train", *overrides(tmp_path / "bf16", *args)]) == 0
    assert seen == [torch.bfloat16]
    monkeypatch.setattr(train_data, "views_travel_as", lambda cfg: torch.float32)
    assert main(["train", *overrides(tmp_path / "fp32", *args)]) == 0
    sent_bf16, sent_fp32 = final_weights(tmp_path / "bf16"), final_weights(tmp_path / "fp32")
    assert sent_bf16.keys() == sent_fp32.keys()
    assert all(torch.equal(sent_bf16[k], sent_fp32[k]) for k in sent_bf16)


def test_views_travel_in_float32_without_autocast() -> None:
    from openslip.train.recipes import make_config

    for precision, dtype in (("fp32", torch.float32), ("fp64", torch.float32), ("fp16", torch.float16)):
        assert train_data.views_travel_as(make_config({"train": {"precision": precision}})) == dtype
