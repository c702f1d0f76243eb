"""One optimisation step for every loop: `step.OptimStep` against plain PyTorch, and each loop that trains
(`openslip train`, `openslip finetune`, the SGD probe, `openslip bench train`) running through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import openslip.bench.training as bench_module
import openslip.step as step_module
import openslip.train.loop as train_module
from openslip.cli import main
from openslip.optim import warmup_cosine
from openslip.step import OptimStep, PhaseClock

pytestmark = pytest.mark.usefixtures("one_thread")


def _model_and_loss(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(8, 6)
    return model, model(x).pow(2).sum()


@pytest.mark.parametrize("grad_clip", [None, 0.5])
def test_update_matches_plain_pytorch(grad_clip: float | None) -> None:
    """Norm measured before clipping, clipped as clip_grad_norm_ does, then the same AdamW step."""
    model, loss = _model_and_loss()
    ref, ref_loss = _model_and_loss()
    opt = OptimStep(torch.optim.AdamW(model.parameters(), lr=0.1), schedule=lambda s: 0.1, grad_clip=grad_clip)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.1)
    opt.backward(loss)
    norm = opt.update(model.parameters())
    ref_loss.backward()
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ref.parameters()]))
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(ref.parameters(), grad_clip)
    ref_opt.step()
    torch.testing.assert_close(norm, expected)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        assert p.grad is None  # cleared for the next step


def test_fp16_scaler_unscales_before_the_norm() -> None:
    model, loss = _model_and_loss()
    plain, plain_loss = _model_and_loss()
    opt = OptimStep(torch.optim.SGD(model.parameters(), lr=0.1), schedule=lambda s: 0.1, precision="fp16")
    assert opt.scaler.is_enabled() and opt.scale(torch.tensor(1.0)).item() > 1
    opt.backward(loss)
    plain_loss.backward()
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in plain.parameters()]))
    torch.testing.assert_close(opt.update(model.parameters()), expected)


def test_schedule_and_layer_scales() -> None:
    model = torch.nn.Linear(2, 2)
    groups = [{"params": [model.weight], "lr_scale": 0.25}, {"params": [model.bias]}]
    opt = OptimStep(
        torch.optim.SGD(groups, lr=1.0), schedule=lambda s: warmup_cosine(s, 10, warmup=2, peak=2.0, floor=0)
    )
    assert opt.set_lr(1) == 1.0
    assert [g["lr"] for g in opt.optimizer.param_groups] == [0.25, 1.0]
    assert opt.set_lr(10) == 0.0


def test_phase_clock_adds_up_laps() -> None:
    clock = PhaseClock(torch.device("cpu"))
    for phase in ("data", "forward", "data"):
        clock.lap(phase)
    assert set(clock.times) == {"data", "forward"} and all(v >= 0 for v in clock.times.values())


def _count_updates(monkeypatch) -> list[str]:
    """Record the optimizer class of every OptimStep.update call."""
    seen: list[str] = []
    real = OptimStep.update

    def spy(self, params):
        seen.append(type(self.optimizer).__name__)
        return real(self, params)

    monkeypatch.setattr(step_module.OptimStep, "update", spy)
    return seen


def test_training_logs_the_gradient_norm(tmp_path: Path, monkeypatch) -> None:
    seen = _count_updates(monkeypatch)
    run = tmp_path / "run"
    argv = ["train", "model=slip_vit_micro", "train.steps=2", "train.batch_size=8", "train.log_every=1",
            "train.grad_clip=1.0", "data.num_workers=0", f"out_dir={run}"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    norms = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert len(norms) == 2 and all(n > 0 for n in norms)
    assert seen == ["AdamW", "AdamW"]


@pytest.mark.parametrize(
    "argv, optimizer",
    [
        (["finetune", "epochs=1", "warmup_epochs=0", "batch_size=16"], "AdamW"),
        (["eval", "linear", "linear_protocol=sgd", "linear_epochs=1", "linear_batch_size=16"], "SGD"),
    ],
)
def test_evaluation_loops_use_the_shared_step(argv: list[str], optimizer: str, monkeypatch) -> None:
    seen = _count_updates(monkeypatch)
    common = ["--model", "slip_vit_micro", "--pretrained", "none", "--dataset", "demo_colours", "-n", "16",
              "--num-train", "32"]  # fmt: skip
    assert main([*argv, *common]) == 0
    assert seen and set(seen) == {optimizer}


def test_bench_times_the_training_step(monkeypatch, tmp_path) -> None:
    """`openslip bench train` runs train.optimise (the step of `openslip train`) for both paths."""
    assert bench_module.optimise is train_module.optimise
    calls: list[str] = []
    real = train_module.optimise

    def spy(t, inputs, clock=step_module.NO_CLOCK, samples=list):
        calls.append(type(t.opt.optimizer).__name__ + ("/fused" if t.opt.optimizer.defaults.get("fused") else ""))
        return real(t, inputs, clock, samples)

    monkeypatch.setattr(bench_module, "optimise", spy)
    out = tmp_path / "bench.json"
    argv = ["bench", "train", "model=slip_vit_micro", "train.batch_size=4", "--steps", "1", "--warmup", "0",
            "--baseline", "--peak-budget", "0.05", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert sorted(set(calls)) == ["AdamW", "AdamW/fused"]  # the 2021 optimizer and the candidate's
    phases = json.loads(out.read_text())["model_only"]["breakdown_s"]
    assert set(phases) == {"data", "forward", "backward", "optimizer"} and min(phases.values()) >= 0
