"""benchmarks/loader_cpu.py, shrunk: both measures on a few small JPEG shards, for this checkout, as documented."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from openslip.cli import main
from tests.bench_scripts import BENCHMARKS, load_script


def test_loader_cpu_measures_this_checkout(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    make_images = load_script("gpu_check").make_images
    manifest = make_images(tmp_path / "images", 16, (100, 75))
    assert main(["data", "make-shards", str(manifest), str(tmp_path / "shards"), "--shard-size", "4"]) == 0
    out = tmp_path / "rows.json"
    argv = ["--trees", str(BENCHMARKS.parent), "--shards", str(tmp_path / "shards" / "shard-{000000..000003}.tar")]
    argv += ["--image-size", "32", "--batch", "4", "--steps", "3", "--rounds", "1", "--output", str(out)]
    assert load_script("loader_cpu").main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["inprocess", "worker"]
    assert all(r["cpu_ms_per_sample"] > 0 and r["faults_per_batch"] >= 0 for r in rows)
    assert "ms CPU per sample" in capsys.readouterr().out
