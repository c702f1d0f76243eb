"""Shared settings for the training tests: a micro SLIP on the 32 px demo world, a few steps."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

FAST = [
    "model=slip_vit_micro",
    "train.batch_size=16",
    "train.log_every=1",
    "train.progress=false",
    "data.num_workers=0",
    "eval.sets=[]",
    "optim.warmup_steps=2",
]


def merged(*items: str) -> list[str]:
    """`key=value` overrides in which a later value of a key replaces an earlier one (the CLI refuses a key given
    twice), so that a test may add to its usual settings one that changes them; a replaced key moves to the end."""
    values: dict[str, str] = {}
    for item in items:
        values.pop(item.partition("=")[0], None)  # re-inserted last
        values[item.partition("=")[0]] = item
    return list(values.values())


def overrides(out_dir: Path | str, *extra: str) -> list[str]:
    """FAST with `out_dir` and `extra` (merged: `extra` may change the usual settings)."""
    return merged(*FAST, f"out_dir={out_dir}", *extra)


def final_weights(run_dir: Path | str) -> dict[str, torch.Tensor]:
    latest = Path(run_dir) / "checkpoints" / (Path(run_dir) / "checkpoints" / "latest").read_text().strip()
    return load_file(str(latest / "model.safetensors"))


def rewind(run_dir: Path | str, newest: str, to: str) -> None:
    """Delete the checkpoint `newest` of a run and point `latest` at `to`: the run as if killed after `to`."""
    ckpts = Path(run_dir) / "checkpoints"
    for p in (ckpts / newest).iterdir():
        p.unlink()
    (ckpts / newest).rmdir()
    (ckpts / "latest").write_text(f"{to}\n")


def assert_resumes_bit_exactly(run_dir: Path | str, args: list[str]) -> None:
    """`openslip train` with `args` (train.steps=4, a checkpoint every 2 steps, 5 kept) run once whole, then again
    from its step-2 checkpoint: the final weights must be equal to the bit."""
    from openslip.cli import main

    assert main(["train", *overrides(run_dir, *args)]) == 0
    uninterrupted = final_weights(run_dir)
    rewind(run_dir, "step_0000004", "step_0000002")
    assert main(["train", *overrides(run_dir, *args)]) == 0
    resumed = final_weights(run_dir)
    assert set(resumed) == set(uninterrupted)
    for k in resumed:
        assert torch.equal(resumed[k], uninterrupted[k]), k


def read_metrics(run_dir: Path | str) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_weights_close(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lr: float = 2e-3, steps: int = 5
) -> None:
    """Weights of two runs that computed the same losses in a different float order.

    Parameters with no true gradient (biases in front of BatchNorm, the key part of qkv biases) get
    float noise as gradient, which Adam normalises into steps of size ~lr: they may differ by up to
    lr x steps. Everything else must agree closely."""
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-3, atol=2 * lr * steps, msg=k)
