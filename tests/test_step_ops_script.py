"""benchmarks/step_ops.py, shrunk: the casts and concatenations of one micro SLIP step, by origin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_scripts import load_script


def _count(tmp_path: Path, precision: str) -> dict:
    out = tmp_path / f"{precision}.json"
    argv = ["model=slip_vit_micro", f"train.precision={precision}", "train.batch_size=2", "--device", "cpu"]
    assert load_script("step_ops").main([*argv, "--ops", "_to_copy,cat", "--output", str(out)]) == 0
    return json.loads(out.read_text())["ops"]


def _by_file(origins: dict[str, int]) -> dict[str, int]:
    """{"modules/linear.py:134": 3} -> {"modules/linear.py": 3}: the line numbers move with each version."""
    out: dict[str, int] = {}
    for where, n in origins.items():
        out[where.split(":")[0]] = out.get(where.split(":")[0], 0) + n
    return out


def test_step_ops_puts_autocasts_casts_down_to_their_layers(tmp_path: Path, capsys) -> None:
    bf16, fp32 = _count(tmp_path, "bf16"), _count(tmp_path, "fp32")
    casts = _by_file(bf16["_to_copy"]["origins"])
    # autocast casts each linear's weight, bias and fp32 input, and the backward pass casts their gradients back
    assert casts["modules/linear.py"] > 0 and casts["backward"] > 0
    assert sum(casts.values()) == bf16["_to_copy"]["calls"]
    # in fp32 nothing is cast by autocast: no cast in the layers, none in the backward pass
    plain = fp32["_to_copy"]["origins"]
    assert "modules/linear.py" not in _by_file(plain) and "backward: ToCopyBackward0" not in plain
    # the views go through the ViT in one call: one concatenation of them, the same in both precisions
    assert _by_file(bf16["cat"]["origins"])["models/slip.py"] == _by_file(fp32["cat"]["origins"])["models/slip.py"] == 1
    assert "aten::_to_copy: " in capsys.readouterr().out


@pytest.mark.parametrize(
    "settings",
    [["model=slip_vit_micro"], ["model=slip_vit_micro", "loss.contrastive=sigmoid"],
     ["model=slip_vit_micro", "loss.ssl=distill"], ["model=clip_vit_micro"], ["model=simclr_vit_micro"]],
    ids=["slip", "sigmoid", "distill", "clip", "simclr"],
)  # fmt: skip
def test_a_training_step_reads_one_value_back_from_the_device(tmp_path: Path, settings: list[str]) -> None:
    """On a GPU each read of a tensor's value on the host waits for the device. A step that does not log reads one,
    the finite-loss flag (openslip/step.py), on every objective; on a CPU the model also reads the text length
    (models/slip.py), which on a GPU the loader's tokenizer trims on the host instead."""
    out = tmp_path / "ops.json"
    argv = [*settings, "train.batch_size=4", "--device", "cpu", "--ops", "_local_scalar_dense,nonzero"]
    assert load_script("step_ops").main([*argv, "--output", str(out)]) == 0
    ops = json.loads(out.read_text())["ops"]
    reads = _by_file(ops["_local_scalar_dense"]["origins"])
    assert reads.pop("openslip/step.py") == 1 and set(reads) <= {"models/slip.py"}, reads
    assert ops["nonzero"]["calls"] == 0  # no boolean-mask indexing either


def test_step_ops_refuses_a_bad_setting_in_one_line(capsys) -> None:
    assert load_script("step_ops").main(["model=slip_vit_micro", "model=clip_vit_micro"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("step_ops.py: error: model is given twice"), err
