"""benchmarks/collectives.py, the on-paper estimate of a step's collectives ('Many GPUs, on paper' in
docs/PERFORMANCE.md): its bytes follow from the model and the loss, its bad inputs end in one line, and the table
the docs show is what the documented command prints (test_documented_commands runs `openslip ...` commands only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import load_script

import openslip

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PERFORMANCE.md"


def test_bytes_follow_from_the_parameters_and_the_gathered_embeddings(tmp_path: Path, capsys) -> None:
    out = tmp_path / "rows.json"
    assert (
        load_script("collectives").main(["--models", "slip_vit_micro", "--global-batch", "128", "--json", str(out)])
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["gpus"] for r in rows] == [8, 64]
    params = sum(p.numel() for p in openslip.create_model("slip_vit_micro").parameters())  # real weights, on CPU
    cfg = openslip.model_config("slip_vit_micro")
    # fp32 values: image + text embeddings (embed_dim) and two views' head outputs (out_dim), over the global batch
    gathered = 128 * (2 * cfg.embed_dim + 2 * cfg.ssl_head.out_dim) * 4
    for r in rows:
        p = r["gpus"]
        assert r["params"] == params and r["grad_payload"] == 4 * params
        assert r["gather_payload"] == r["gather_grad_payload"] == gathered
        assert r["per_gpu_batch"] == 128 // p
        # ring: all-gather (p-1)/p, all-reduce 2(p-1)/p of the payload
        assert r["grad_sent"] == pytest.approx(2 * (p - 1) / p * 4 * params)
        assert r["gather_sent"] == pytest.approx(3 * (p - 1) / p * gathered)
        assert r["grad_ms"] == pytest.approx(r["grad_sent"] / (r["bus_gb_s"] * 1e9) * 1e3)
        assert 0 < r["gather_fraction"] + r["grad_fraction"] < 1
    printed = capsys.readouterr().out
    assert f"| micro | {params:,} |" in printed.replace("slip_vit_micro", "micro")


def test_a_clip_model_gathers_only_its_two_embeddings(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    assert (
        load_script("collectives").main(["--models", "clip_vit_micro", "--global-batch", "64", "--json", str(out)]) == 0
    )
    row = json.loads(out.read_text())[0]
    assert row["gather_payload"] == 64 * 2 * openslip.model_config("clip_vit_micro").embed_dim * 4


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--models", "slip_vit_nosuch"], "unknown model 'slip_vit_nosuch'"),
        (["--global-batch", "100"], "--global-batch must be a positive multiple of 64"),
        (["--ib-gb-s", "0"], "bandwidths must be > 0"),
    ],
)
def test_bad_inputs_end_in_one_line(argv: list[str], words: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        load_script("collectives").main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("collectives.py: error: ") and words in last


def test_the_documented_table_is_what_the_documented_command_prints(capsys) -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Many GPUs, on paper", 1)[1].split("\n## ", 1)[0]
    assert "python benchmarks/collectives.py\n" in section
    assert load_script("collectives").main([]) == 0  # the documented command: S/16, B/16, L/16 built on the meta device
    printed = capsys.readouterr().out.strip()
    assert printed in section, "docs/PERFORMANCE.md's 'Many GPUs, on paper' table differs from the script's output"
