"""Sharded training (`train.parallel=fsdp`, FSDP2; docs/TRAINING.md, 'Sharded training (FSDP)') on 2 gloo processes:
the same losses, gradients and weights as DDP, a checkpoint that resumes bit-exactly on the same world size and
continues on another, one-line bad settings."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_distributed
from train_utils import final_weights, overrides, read_metrics, rewind

from openslip.cli import main
from openslip.overrides import parse_overrides
from openslip.train import train
from openslip.train.recipes import make_config

pytestmark = pytest.mark.multiprocess

# float64 end to end (train.precision=fp64): the two runs then agree far below any rounding that Adam could amplify
EXACT = ["train.precision=fp64", "train.steps=3", "train.batch_size=8"]
# every model part whose weights FSDP shards or keeps whole: both towers, the SimCLR head with its global BatchNorm,
# the scalar temperature; and the sigmoid loss's bias, the distillation head with its EMA teacher
CASES = {
    "slip": [],
    "siglip_distill": ["loss.contrastive=sigmoid", "loss.ssl=distill", "loss.local_crops=2"],
}


def _train(info, out_dir, args):
    summary = train(make_config(parse_overrides(overrides(out_dir, *args))))
    return {"steps": summary["steps"]}


def _largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp_trains_as_ddp(tmp_path, case):
    """Losses, gradient norms and the final weights of 3 steps, with exact accumulation in the FSDP run."""
    args = [*EXACT, *CASES[case]]
    run_distributed(_train, 2, str(tmp_path / "ddp"), [*args, "train.parallel=ddp"], timeout_s=300)
    run_distributed(_train, 2, str(tmp_path / "fsdp"), [*args, "train.parallel=fsdp"], timeout_s=300)
    ddp, fsdp = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "fsdp")
    for a, b in zip(ddp, fsdp, strict=True):
        for key in ("loss", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-10 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])
    assert _largest_difference(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp")) < 1e-10


def test_accumulation_under_fsdp_is_exact(tmp_path):
    args = [*EXACT, "train.parallel=fsdp"]
    run_distributed(_train, 2, str(tmp_path / "one"), args, timeout_s=300)
    run_distributed(_train, 2, str(tmp_path / "acc"), [*args, "train.accum_steps=2"], timeout_s=300)
    one, acc = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "acc")
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in acc], rel=1e-10)
    # micro-batches sum the gradients in another order; AdamW's g / (|g| + eps) turns that rounding into weight
    # differences far above it for the near-zero gradients (biases in front of BatchNorm): 1.8e-9 measured
    assert _largest_difference(final_weights(tmp_path / "one"), final_weights(tmp_path / "acc")) < 1e-7


def test_fsdp_resumes_bit_exactly_and_on_another_world_size(tmp_path):
    args = ["train.steps=4", "train.batch_size=8", "ckpt.every_steps=2", "ckpt.keep_last=5", "train.parallel=fsdp"]
    run = tmp_path / "run"
    run_distributed(_train, 2, str(run), args, timeout_s=300)
    uninterrupted = final_weights(run)
    rewind(run, "step_0000004", "step_0000002")
    run_distributed(_train, 2, str(run), args, timeout_s=300)
    resumed = final_weights(run)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    # the checkpoint holds full tensors: one process continues it (the sums are in another order: close, not equal)
    rewind(run, "step_0000004", "step_0000002")
    assert main(["train", *overrides(run, *args)]) == 0
    last = {r["step"]: r["loss"] for r in read_metrics(run)}
    assert last[4] == pytest.approx(read_metrics(tmp_path / "run")[-1]["loss"], rel=1e-4)


def test_a_ddp_checkpoint_continues_sharded(tmp_path):
    args = ["train.steps=4", "train.batch_size=8", "ckpt.every_steps=2", "ckpt.keep_last=5"]
    run = tmp_path / "run"
    assert main(["train", *overrides(run, *args)]) == 0  # one process: torch's own optimizer state format
    losses = [r["loss"] for r in read_metrics(run)]
    rewind(run, "step_0000004", "step_0000002")
    run_distributed(_train, 2, str(run), [*args, "train.parallel=fsdp"], timeout_s=300)
    assert [r["loss"] for r in read_metrics(run)] == pytest.approx(losses, rel=1e-4)


def test_an_unknown_parallel_mode_is_one_line(tmp_path, capsys):
    assert main(["train", f"out_dir={tmp_path}", "train.parallel=zero3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.parallel='zero3' is not valid; choose one of: ddp, fsdp" in err and len(err.splitlines()) == 1
