"""benchmarks/architecture.py, the before/after figures of a refactoring (issue 26): its static part, read from this
checkout's source, gives a whole number for every figure and a table row for each; a folder that is no checkout
is refused (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import load_script


def test_static_figures(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("architecture")
    assert script.main(["--json", "--static"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for key in ("rooms", "parts", "arrows", "part_arrows", "command_lines", "command_code_lines"):
        assert isinstance(figures[key], int) and figures[key] > 0, key
    assert figures["parts"] < figures["rooms"] and figures["part_arrows"] <= figures["arrows"]
    assert figures["arrows_back_up"] == len(figures["arrows_back_up_list"]) >= 0
    assert {"models", "data", "eval", "commands", "cli"} <= set(figures["part_names"])
    table = script.table(figures)  # what the script prints without --json
    assert table.startswith("| figure | value |")
    assert f"| rooms (modules) | {figures['rooms']} |" in table and "| part cycles |" in table


def test_not_a_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        load_script("architecture").main(["--static", "--root", str(tmp_path)])
    assert stop.value.code == 2 and "holds no openslip/ folder" in capsys.readouterr().err
