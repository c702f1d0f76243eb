"""One-GPU check: SLIP S/16 and B/16 training-step throughput, MFU and memory in bf16, then a short NCCL run of the
training CLI. Writes one JSON. Runs in about 6-8 minutes on one H100-class GPU.

    python benchmarks/gpu_check.py --output gpu_check.json          # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run --output dry.json      # CPU: the same steps on a micro model

Each configuration runs `openslip bench train` in a fresh process (an out-of-memory error stays in its row), in
priority order until the time budget is spent; what did not fit is listed as skipped, never dropped silently.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Case:
    """One `openslip bench train` configuration."""

    model: str
    batch_size: int
    grad_checkpointing: bool = False
    compile: bool = False
    with_data: bool = False  # the demo world through the on-device augmentation: how long the step waits for data
    extra: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        flags = [f for f, on in (("ckpt", self.grad_checkpointing), ("compile", self.compile)) if on]
        return (
            f"{self.model} b{self.batch_size}" + "".join(f" +{f}" for f in flags) + (" data" if self.with_data else "")
        )


def cases(dry_run: bool) -> list[Case]:
    """In priority order: the plain step at three batch sizes, then checkpointing, compile and the data path."""
    if dry_run:
        return [Case("slip_vit_micro", 8), Case("slip_vit_micro", 8, grad_checkpointing=True),
                Case("slip_vit_micro", 8, with_data=True)]  # fmt: skip
    out: list[Case] = []
    for model in ("slip_vit_s16", "slip_vit_b16"):
        out += [Case(model, b) for b in (64, 128, 256)]
    for model in ("slip_vit_s16", "slip_vit_b16"):
        out += [Case(model, 256, grad_checkpointing=True), Case(model, 128, compile=True)]
        out.append(Case(model, 128, with_data=True))
    return out


def bench_argv(case: Case, dry_run: bool, output: Path) -> list[str]:
    argv = [sys.executable, "-m", "openslip.cli", "bench", "train", "--model", case.model, "--batch-size",
            str(case.batch_size), "--output", str(output)]  # fmt: skip
    if dry_run:
        argv += ["--device", "cpu", "--precision", "fp32", "--steps", "1", "--warmup", "1", "--peak-budget", "0.05",
                 "--image-size", "32", "--num-workers", "0"]  # fmt: skip
    else:
        argv += ["--device", "cuda", "--precision", "bf16", "--steps", "5", "--warmup", "3", "--peak-budget", "1"]
    if case.grad_checkpointing:
        argv.append("--grad-checkpointing")
    if case.compile:
        argv.append("--compile")
    if case.with_data:
        argv += ["--with-data", "--augment", "device"]
    return argv + case.extra


def summarise(result: dict) -> dict:
    """The figures the check reports from one `openslip bench train` JSON."""
    row = {
        "samples_per_s": result["model_only"]["samples_per_s"],
        "mfu": result["model_only"]["mfu"],
        "matmul_peak_tflops": result["matmul_peak_flops_per_s"] / 1e12,
        "peak_memory_mb": result["model_only"]["peak_memory_mb"],
    }
    if "end_to_end" in result:
        e2e = result["end_to_end"]
        row.update(
            end_to_end_samples_per_s=e2e["samples_per_s"],
            end_to_end_ratio=e2e.get("ratio_to_model_only"),
            data_wait_s_per_step=e2e["breakdown_s"]["data"],
        )
    return row


def run_case(case: Case, dry_run: bool, workdir: Path, timeout_s: float) -> dict:
    out = workdir / f"{len(list(workdir.iterdir()))}.json"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(bench_argv(case, dry_run, out), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"case": asdict(case), "status": f"timeout after {timeout_s:.0f} s"}
    row: dict = {"case": asdict(case), "name": case.name, "wall_s": round(time.perf_counter() - t0, 1)}
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        oom = "out of memory" in (proc.stderr + proc.stdout).lower()
        return {**row, "status": "out of memory" if oom else f"failed (exit {proc.returncode}): {tail[0][:200]}"}
    result = json.loads(out.read_text())
    return {**row, "status": "ok", **summarise(result), "machine": result.get("machine")}


def nccl_train(dry_run: bool, workdir: Path, timeout_s: float) -> dict:
    """`openslip train` under torchrun with one process: the NCCL path end to end (gloo on CPU for --dry-run)."""
    model, steps, batch = ("slip_vit_micro", 2, 8) if dry_run else ("slip_vit_s16", 20, 128)
    overrides = [f"model={model}", f"train.steps={steps}", f"train.batch_size={batch}", "eval.zeroshot=[]",
                 f"out_dir={workdir / 'nccl_run'}", "train.progress=false", "data.augment=device",
                 "train.log_every=1"]  # fmt: skip
    overrides += ["data.image_size=32", "data.num_workers=0"] if dry_run else ["train.precision=bf16"]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
            "-m", "openslip.cli", "train", *overrides]  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout_s:.0f} s"}
    metrics = workdir / "nccl_run" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    losses = [r["loss"] for r in records if "loss" in r]
    status = "ok" if proc.returncode == 0 and losses else f"failed (exit {proc.returncode})"
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    return {"status": status, "backend": "gloo" if dry_run else "nccl", "model": model, "steps": steps,
            "wall_s": round(time.perf_counter() - t0, 1), "losses": losses, "stderr_tail": tail}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, micro model: check the script itself")
    p.add_argument("--output", default="gpu_check.json", help="the JSON to write")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new cases after this many seconds")
    args = p.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --dry-run to check the script on a CPU)", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    report: dict = {"dry_run": args.dry_run, "cases": [], "skipped": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "bench").mkdir()
        for case in cases(args.dry_run):
            left = args.budget_s - (time.perf_counter() - t0)
            if left < 20:
                report["skipped"].append({"case": asdict(case), "reason": "time budget spent"})
                continue
            row = run_case(case, args.dry_run, work / "bench", timeout_s=max(left, 20))
            report["cases"].append(row)
            speed = f"{row.get('samples_per_s', 0):9.1f} samples/s MFU {100 * row.get('mfu', 0):5.1f}%"
            print(f"{case.name:32s} {row['status']:10s} {speed} {row.get('peak_memory_mb', 0):9.0f} MB", flush=True)
        report["train_cli"] = nccl_train(args.dry_run, work, timeout_s=120 if args.dry_run else 180)
        print(f"train CLI ({report['train_cli'].get('backend')}): {report['train_cli']['status']}", flush=True)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output} ({report['wall_s']:.0f} s)")
    return 0 if all(c["status"] == "ok" for c in report["cases"]) and report["train_cli"]["status"] == "ok" else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
