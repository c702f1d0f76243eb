"""benchmarks/fsdp_memory.py, the computed memory per GPU under DDP and FSDP
(docs/TRAINING.md, 'Sharded training (FSDP)'): the table in the docs is what the script prints, its figures follow
from the parameter counts, and its bad inputs are one line."""

from __future__ import annotations

from pathlib import Path

from bench_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_show_what_the_script_prints(capsys):
    assert load_script("fsdp_memory").main([]) == 0
    table = capsys.readouterr().out.strip()
    assert table in (ROOT / "docs" / "TRAINING.md").read_text()


def test_fsdp_holds_a_share_of_the_state_and_the_same_activations():
    script = load_script("fsdp_memory")
    ddp8, ddp64 = script.per_gpu("slip_vit_b16", 8, 4096), script.per_gpu("slip_vit_b16", 64, 4096)
    assert ddp8["ddp_state_gib"] == ddp64["ddp_state_gib"] == 16 * ddp8["params_m"] * 1e6 / 2**30
    assert ddp8["fsdp_state_gib"] > ddp64["fsdp_state_gib"] > ddp64["ddp_state_gib"] / 64
    assert ddp8["activations_gib"] == 8 * ddp64["activations_gib"]  # per-sample, times the batch per GPU
    assert ddp8["activations_ckpt_gib"] < ddp8["activations_gib"] / 5


def test_bad_gpu_counts_are_one_line(capsys):
    script = load_script("fsdp_memory")
    assert script.main(["--gpus", "eight"]) == 2
    assert script.main(["--gpus", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "comma-separated integers" in err[0] and "divide --global-batch 4096" in err[1]
