"""README's sample output of the main command is what `openslip train` prints today: the same lines, in the same
order and form (numbers and paths aside), checked on a shrunk run of the same recipe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).resolve().parents[1] / "README.md"


def _sample_block() -> list[str]:
    text = README.read_text(encoding="utf-8")
    after = text.split("tells you where the", 1)[1]
    block = after.split("```", 2)[1]  # the first fenced block after that sentence
    return [line for line in block.splitlines() if line.strip()]


def _shape(line: str, run_dir: str) -> str:
    """A line with its numbers and the run directory replaced, to compare forms, not values."""
    line = line.replace(run_dir, "RUN")
    return re.sub(r"\d+(\.\d+)?", "N", line)


def test_readme_sample_output_has_the_printed_form(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["train", "model=slip_vit_micro", "train.steps=2", "train.batch_size=8", "data.num_workers=0",
            "eval.samples=16", "optim.warmup_steps=1", "out_dir=runs/demo"]  # fmt: skip
    assert main(argv) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    documented = _sample_block()
    assert [_shape(p, "runs/demo") for p in printed] == [_shape(d, "runs/demo") for d in documented]


def test_readmes_evaluation_table_names_demo_tasks_with_their_chance() -> None:
    """README's demo evaluation table: one row per demo task, its chance rate 1 / number of classes, and the
    columns of the four evaluations (`openslip eval zeroshot|knn|linear`, `openslip finetune`)."""
    from openslip.data.demo.tasks import DEMO_TASKS

    text = README.read_text(encoding="utf-8").split("| task (chance) |", 1)[1]
    header = ("| task (chance) |" + text).splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "task (chance)",
        "zero-shot",
        "kNN",
        "linear probe",
        "finetune",
    ]
    rows = []
    for line in text.splitlines()[2:]:  # past the header's rest and the separator row
        if not line.startswith("|"):
            break
        rows.append(line)
    assert rows
    for row in rows:
        m = re.fullmatch(r"\| (\w+) \(([\d.]+)\) \|(.*)\|", row)
        assert m, row
        spec = DEMO_TASKS.get(m.group(1))
        assert float(m.group(2)) == pytest.approx(100 / len(spec.classnames), abs=0.05)
        assert len(m.group(3).split("|")) == 4
