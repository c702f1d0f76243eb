"""Benchmarks: analytic FLOPs against torch's flop counter, the 2021 baseline forward, the bench CLI.

Everything runs on one thread: on a shared 2-core machine two OpenMP threads competing with another
process make tiny steps 10x slower (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import openslip
from openslip.bench.baseline import reference_forward
from openslip.bench.training import PHASES, PathStats
from openslip.cli import main
from openslip.losses import SLIPLoss
from openslip.models.flops import slip_sample_flops
from openslip.train.perf import tune_cpu_runtime

EOT, SOT = 49407, 49406


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(model, batch: int, text_len: int) -> dict[str, torch.Tensor]:
    size = model.cfg.vision.image_size
    g = torch.Generator().manual_seed(0)
    out = {}
    if model.has_text:
        out["image"] = torch.randn(batch, 3, size, size, generator=g)
        text = torch.zeros(batch, 77, dtype=torch.long)
        text[:, 0], text[:, 1 : text_len - 1], text[:, text_len - 1] = SOT, 7, EOT
        out["text"] = text
    if model.has_ssl_head:
        out["view1"] = torch.randn(batch, 3, size, size, generator=g)
        out["view2"] = torch.randn(batch, 3, size, size, generator=g)
    return out


def _loss(model, inputs, forward=None):
    out = (forward or model)(**inputs)
    return SLIPLoss(ssl_scale=1.0 if model.has_ssl_head else 0.0, clip_scale=1.0 if model.has_text else 0.0)(out)


@pytest.mark.parametrize("name", ["slip_vit_micro", "clip_vit_micro", "simclr_vit_micro", "slip_vit_tiny"])
def test_analytic_flops_match_flop_counter(name: str) -> None:
    torch.manual_seed(0)
    model = openslip.create_model(name)
    batch, text_len = 4, 12
    inputs = _inputs(model, batch, text_len)
    expected = slip_sample_flops(model.cfg, batch_size=batch, text_len=text_len)
    # The math SDPA backend runs attention as counted matmuls (the CPU flash kernel has no flop formula).
    with sdpa_kernel(SDPBackend.MATH):
        fwd = FlopCounterMode(display=False)
        with fwd, torch.no_grad():
            _loss(model, inputs)
        both = FlopCounterMode(display=False)
        with both:
            _loss(model, inputs)["loss"].backward()
    assert fwd.get_total_flops() == pytest.approx(batch * expected.forward, rel=0.02)
    assert both.get_total_flops() == pytest.approx(batch * expected.train, rel=0.02)


def test_baseline_flops_count_the_full_context() -> None:
    model = openslip.create_model("slip_vit_micro")
    inputs = _inputs(model, 2, 10)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        _loss(model, inputs, forward=lambda **kw: reference_forward(model, **kw))
    expected = slip_sample_flops(model.cfg, batch_size=2, text_len=77)  # the 2021 code never trims the text
    assert counter.get_total_flops() == pytest.approx(2 * expected.forward, rel=0.02)


@pytest.mark.parametrize("name", ["slip_vit_micro", "simclr_vit_micro"])
def test_reference_forward_matches_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = openslip.create_model(name).eval()
    inputs = _inputs(model, 3, 9)
    with torch.no_grad():
        ours, ref = model(**inputs), reference_forward(model, **inputs)
    assert ours.keys() == ref.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=1e-5)


def test_vit_s16_step_flops_near_the_reference_figure() -> None:
    cfg = openslip.models.model_config("slip_vit_s16")
    step = 16 * slip_sample_flops(cfg, batch_size=16).train
    assert step == pytest.approx(1.609e12, rel=1e-3)  # the figure of docs/DESIGN.md, 'Measuring performance'


def test_bench_train_cli_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "train",
        "model=slip_vit_micro",
        "train.batch_size=8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--baseline",
        "--peak-budget",
        "0.2",
        "train.threads=1",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    for key in (
        "samples_per_s",
        "mfu",
        "matmul_peak_flops_per_s",
        "flops_per_sample",
        "model_only",
        "machine",
        "baseline",
        "speedup_vs_baseline",
        "load_avg",
    ):
        assert key in r, key
    mo = r["model_only"]
    assert set(mo["breakdown_s"]) == {"data", "forward", "backward", "optimizer"}
    assert mo["samples_per_s"] > 0 and mo["peak_memory_mb"] > 0
    assert 0 < r["mfu"] < 1.5
    assert 0 < r["baseline"]["model_only"]["mfu"] < 1.5
    assert r["flops_per_sample"]["train"] > r["flops_per_sample"]["forward"] > 0
    # the best ratio a step of openslip's FLOPs could show: the baseline's time over those FLOPs at the peak
    ceiling = r["baseline"]["model_only"]["step_s"] * r["matmul_peak_flops_per_s"] / mo["flops_per_step"]
    assert r["speedup_ceiling_vs_baseline"] == pytest.approx(ceiling)
    assert f"would be {r['speedup_ceiling_vs_baseline']:.2f}x the baseline (model-only)" in capsys.readouterr().out
    assert isinstance(r["machine"].get("isa", []), list)  # the CPU's ISA flags name the kernels a figure ran on


def test_baseline_runs_in_the_candidates_precision(monkeypatch, tmp_path) -> None:
    """The 2021 baseline must time the same precision as openslip's step: a bf16 run against an fp32 baseline
    measured the precision, not the implementation."""
    import openslip.bench.training as bench

    seen: list[tuple[bool, object]] = []
    real_step = bench.Stepper.step

    def spy(self, get_inputs):
        seen.append((self.baseline, self.t.opt.precision))
        return real_step(self, get_inputs)

    monkeypatch.setattr(bench.Stepper, "step", spy)
    settings = {"model": "clip_vit_micro", "train": {"batch_size": 4, "precision": "bf16"}}
    cfg = bench.TrainBenchConfig(settings=settings, steps=1, warmup=0, baseline=True, peak_budget_s=0.05)
    bench.bench_train(cfg)
    by_path = {baseline: precision for baseline, precision in seen}
    assert by_path == {False: "bf16", True: "bf16"}


@pytest.mark.parametrize("baseline", [False, True])
def test_bench_train_with_data(tmp_path, capsys, baseline: bool) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "train",
        "model=slip_vit_micro",
        "train.batch_size=4",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--with-data",
        "data.num_workers=0",
        "--peak-budget",
        "0.1",
        "train.threads=1",
        "--output",
        str(out),
        *(["--baseline"] if baseline else []),
    ]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["end_to_end"]["samples_per_s"] > 0 and r["end_to_end"]["ratio_to_model_only"] > 0
    e2e = r["end_to_end"]  # samples over the total time: a step that waited for data counts in full
    assert e2e["step_s"] == pytest.approx(statistics.fmean(e2e["steps_s"]))
    assert e2e["samples_per_s"] == pytest.approx(4 / e2e["step_s"])
    share = e2e["loader_share"]  # the loader's CPU per batch against the model-only step's CPU time
    assert e2e["loader_cpu_s_per_batch"] > 0
    assert share["step_cpu_s"] == pytest.approx(r["model_only"]["step_s"] * r["machine"]["threads"])
    assert share["share"] == pytest.approx(e2e["loader_cpu_s_per_batch"] / share["step_cpu_s"])
    assert share["expected_ratio"] == pytest.approx(1 / (1 + share["share"]))
    assert f"expect end-to-end ~{share['expected_ratio']:.2f} x model-only" in capsys.readouterr().out
    if baseline:  # the 2021 way through its own PIL loader, end to end too
        assert r["baseline"]["end_to_end"]["samples_per_s"] > 0
        assert r["baseline"]["end_to_end"]["loader_cpu_s_per_batch"] > 0
        assert set(r["speedup_vs_baseline"]) == {"model_only", "end_to_end"}


def test_bench_train_rounds_alternate_the_phases(tmp_path, capsys) -> None:
    """--rounds N runs N (model-only, end-to-end) pairs: every step of every round counts in the figures, and the
    ratio is the median of the rounds' own ratios (each pair of phases saw the same machine)."""
    out = tmp_path / "bench.json"
    argv = ["bench", "train", "model=slip_vit_micro", "train.batch_size=4", "--steps", "2", "--warmup", "0"]
    argv += ["--with-data", "data.num_workers=0", "--rounds", "3", "--peak-budget", "0.1", "--output", str(out)]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    e2e = r["end_to_end"]
    assert len(r["model_only"]["steps_s"]) == len(e2e["steps_s"]) == 6 and len(e2e["ratio_by_round"]) == 3
    assert e2e["ratio_to_model_only"] == statistics.median(e2e["ratio_by_round"])
    each = ", ".join(f"{x:.2f}" for x in e2e["ratio_by_round"])
    assert f"{e2e['ratio_to_model_only']:.2f} (median of 3 rounds: {each})" in capsys.readouterr().out


def test_bench_train_device_augment_makes_no_core_sharing_claim(tmp_path, capsys) -> None:
    """With the views rendered in the training process the loader only decodes: its CPU time is reported, but not as
    the share of the cores that would bound the end-to-end ratio."""
    out = tmp_path / "bench.json"
    argv = ["bench", "train", "model=slip_vit_micro", "train.batch_size=4", "--steps", "1", "--warmup", "0"]
    argv += ["--with-data", "data.augment=device", "data.num_workers=0", "--peak-budget", "0.1", "--output", str(out)]
    assert main(argv) == 0
    e2e = json.loads(out.read_text())["end_to_end"]
    assert e2e["loader_cpu_s_per_batch"] > 0 and "loader_share" not in e2e
    assert "expect end-to-end" not in capsys.readouterr().out


def test_bench_data_cli(tmp_path, capsys) -> None:
    out = tmp_path / "data.json"
    assert main(["bench", "data", "--n", "2", "--rounds", "1", "--image-size", "32", "--output", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["cpu_samples_per_s_per_core"] > 0 and r["speedup_cpu"] > 0
    assert "PIL baseline" in capsys.readouterr().out


def test_bench_rejects_bad_arguments(capsys) -> None:
    assert main(["bench", "train", "model=no_such_model", "--steps", "1"]) == 2
    assert "no_such_model" in capsys.readouterr().err
    assert main(["bench", "train", "--steps", "0"]) == 2
    assert main(["bench", "train", "--with-data", "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
    assert main(["bench", "train", "--rounds", "2"]) == 2
    assert "needs --with-data" in capsys.readouterr().err


def test_tune_cpu_runtime_can_be_switched_off(monkeypatch) -> None:
    monkeypatch.setenv("OPENSLIP_NO_TUNE", "1")
    assert tune_cpu_runtime().skipped
    monkeypatch.delenv("OPENSLIP_NO_TUNE")
    tuned = tune_cpu_runtime()
    assert tuned.skipped is None and tuned.threads >= 1


def test_memory_sweep_on_cpu(tmp_path) -> None:
    out = tmp_path / "sweep.json"
    argv = [
        "bench",
        "train",
        "model=slip_vit_micro",
        "train.batch_size=4",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--memory-sweep",
        "--sweep-batches",
        "2,4",
        "--peak-budget",
        "0.1",
        "train.threads=1",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["memory_sweep"]
    assert [(r["batch_size"], r["grad_checkpointing"]) for r in rows] == [(2, False), (4, False), (2, True), (4, True)]
    assert all(r["peak_memory_mb"] > 0 for r in rows)


def test_end_to_end_figures_count_the_steps_that_wait_for_data() -> None:
    """Model-only figures are medians (robust to a step slowed by another process); end-to-end figures are
    samples over the total time, since a median would hide the stalls an end-to-end figure is for."""
    stats = PathStats()
    for data_s in (0.0, 0.0, 0.0, 3.0):  # one step of four waits 3 s for its batch
        stats.add({**{p: 0.0 for p in PHASES}, "data": data_s, "forward": 1.0, "minor_faults": 0, "sys_s": 0.0}, 8.0)
    median = stats.summary(batch_size=4, peak_flops=16.0)
    assert (median["step_s"], median["samples_per_s"], median["breakdown_s"]["data"]) == (1.0, 4.0, 0.0)
    total = stats.summary(batch_size=4, peak_flops=16.0, stalls_count=True)
    assert (total["step_s"], total["samples_per_s"], total["breakdown_s"]["data"]) == (1.75, 4 / 1.75, 0.75)
    assert total["achieved_flops_per_s"] == pytest.approx(32.0 / 7.0)
    assert (total["step_s_median"], total["step_s_mean"]) == (1.0, 1.75)


def test_bench_train_takes_the_training_settings_as_overrides(tmp_path, monkeypatch) -> None:
    """The trainer is built from `openslip train`'s keys, on the same recipe; the result records what it ran."""
    import openslip.bench.training as bench

    built = []
    real = bench.build_trainer
    monkeypatch.setattr(bench, "build_trainer", lambda cfg, dist: built.append(cfg) or real(cfg, dist))
    out = tmp_path / "bench.json"
    argv = ["bench", "train", "model=clip_vit_micro", "train.batch_size=4", "optim.lr=0.001", "data.image_size=32"]
    argv += ["--steps", "1", "--warmup", "0", "--peak-budget", "0.05", "train.threads=1", "--output", str(out)]
    assert main(argv) == 0
    (cfg,) = built
    assert (cfg.model, cfg.train.batch_size, cfg.optim.lr, cfg.data.image_size) == ("clip_vit_micro", 4, 1e-3, 32)
    assert cfg.loss.ssl_scale == 0 and cfg.optim.warmup_steps == 0  # CLIP only; the peak rate from the first step
    c = json.loads(out.read_text())["config"]
    assert (c["model"], c["batch_size"], c["image_size"], c["threads"]) == ("clip_vit_micro", 4, 32, 1)
    assert c["settings"]["optim"] == {"lr": 1e-3}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train.batch_sise=4"], "unknown key 'train.batch_sise'; valid keys: train.steps, train.batch_size"),
        (["train.batch_size=four"], "train.batch_size='four' should be of type int"),
        (["train.precision=fp64"], "train.precision=fp64: bench train times fp32, bf16, fp16"),
        (["train.steps=3"], "train.steps is not a setting of bench train: the benchmark runs --warmup + --steps"),
        (["out_dir=runs/x"], "out_dir is not a setting of bench train"),
        (["--batch-size", "16"], "settings are key=value overrides; write `train.batch_size=16`"),
        (["--model", "slip_vit_s16", "model=clip_vit_s16"], "the model is given twice"),
        (["--precision=bf16"], "write `train.precision=bf16`"),
        (["--data", "/data/train.csv"], "write `data.train=/data/train.csv`"),
        (["--num-workers", "4"], "write `data.num_workers=4`"),
        (["--compile", "--baseline"], "write `train.compile=true`"),
        (["--grad-checkpointing"], "write `train.grad_checkpointing=true`"),
        (["--threads", "1"], "write `train.threads=1`"),
        (["--seed", "3"], "write `seed=3`"),
    ],
)
def test_bench_train_bad_settings_fail_in_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(["bench", "train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("openslip bench: error: ") and message in err[0], err
