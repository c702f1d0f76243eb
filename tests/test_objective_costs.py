"""benchmarks/objective_costs.py, the step time of each objective beside SLIP's through `openslip bench train`
(docs/OBJECTIVES.md, 'Step time'): every objective runs, each gets its own settings, and SLIP's ratio is 1."""

from __future__ import annotations

from bench_scripts import load_script


def test_every_objective_is_measured_beside_slip():
    script = load_script("objective_costs")
    table = script.run("slip_vit_micro", rounds=1, steps=1, extra=["train.batch_size=4", "train.threads=1"])
    assert list(table) == list(script.OBJECTIVES)
    assert table["slip"]["step_time_vs_slip"] == 1.0
    assert all(row["samples_per_s"] > 0 and row["runs"] == 1 for row in table.values())


def test_each_objective_gets_its_own_settings(tmp_path):
    script = load_script("objective_costs")
    argv = script._argv("siglip", "slip_vit_tiny", 5, ["train.threads=1"], tmp_path / "x.json")
    assert argv[argv.index("--model") + 1] == "clip_vit_tiny"
    assert {"loss.ssl_scale=0", "loss.contrastive=sigmoid", "train.threads=1"} <= set(argv)
    argv = script._argv("clip_distill", "slip_vit_tiny", 5, [], tmp_path / "x.json")
    assert argv[argv.index("--model") + 1] == "slip_vit_tiny" and "loss.ssl=distill" in argv
