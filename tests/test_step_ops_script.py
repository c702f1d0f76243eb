"""benchmarks/step_ops.py, shrunk: the casts and concatenations of one micro SLIP step, by origin."""

from __future__ import annotations

import json
from pathlib import Path

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
