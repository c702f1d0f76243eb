"""benchmarks/gpu_check.py, the one-GPU check, in its CPU dry-run mode: every case and the torchrun training run
go through, and the JSON holds the figures the GPU run reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and not report["skipped"]
    for row in report["cases"]:
        assert row["status"] == "ok" and row["samples_per_s"] > 0 and 0 < row["mfu"] and row["peak_memory_mb"] > 0
    assert any("data_wait_s_per_step" in row for row in report["cases"])  # the on-device augmentation case
    train = report["train_cli"]
    assert train["status"] == "ok" and len(train["losses"]) == 2


def test_gpu_check_refuses_without_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        return  # on a GPU machine the real check would run for minutes
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--output", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
