"""`openslip plot` through the CLI: one run, several runs overlaid, units and chance lines, a fixed 0-100 axis for
accuracies, no back-stroke from duplicate steps; the confusion matrix of `openslip eval zeroshot`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import openslip.plot as plot
from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["model=slip_vit_micro", "train.batch_size=8", "data.num_workers=0", "data.image_size=32",
         "optim.warmup_steps=1", "train.log_every=1", "train.steps=3", "eval.samples=16",
         "eval.every_steps=3"]  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    runs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp("runs") / f"seed{seed}"
        assert main(["train", *SMALL, f"seed={seed}", "eval.sets=[zeroshot:demo_shapes]", f"out_dir={out}"]) == 0
        runs.append(out)
    return runs


def _panels(monkeypatch) -> list:
    """Every axes `_panel` drew on, to inspect labels and limits."""
    seen = []
    real = plot._panel

    def spy(ax, key, runs, title):
        real(ax, key, runs, title)
        seen.append((key, ax))

    monkeypatch.setattr(plot, "_panel", spy)
    return seen


def test_plot_one_run_with_units_and_chance_lines(two_runs: list[Path], monkeypatch, capsys) -> None:
    seen = _panels(monkeypatch)
    assert main(["plot", str(two_runs[0])]) == 0
    assert "curves.png" in capsys.readouterr().out
    assert Image.open(two_runs[0] / "plots" / "curves.png").format == "PNG"
    axes = dict(seen)  # the last axes of each key: its single-metric figure
    assert axes["loss"].get_ylabel() == "loss (nats)" and axes["loss"].get_xlabel() == "step"
    zs = axes["zeroshot/demo_shapes"]
    assert zs.get_ylim() == (0.0, 100.0) and zs.get_ylabel() == "score (%)"
    chance_lines = [line for line in zs.get_lines() if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in chance_lines] == [pytest.approx(12.5)]  # 8 demo_shapes classes
    clip = [line.get_ydata()[0] for line in axes["clip_acc"].get_lines() if line.get_linestyle() == "--"]
    assert clip == [pytest.approx(100 / 8)]  # global batch 8
    ssl = [line.get_ydata()[0] for line in axes["ssl_acc"].get_lines() if line.get_linestyle() == "--"]
    assert ssl == [pytest.approx(100 / 15)]


def test_plot_several_runs_overlaid(two_runs: list[Path], tmp_path: Path, monkeypatch, capsys) -> None:
    seen = _panels(monkeypatch)
    out = tmp_path / "both"
    assert main(["plot", *map(str, two_runs), "--out", str(out)]) == 0
    assert (out / "curves.png").is_file() and (out / "loss.png").is_file()
    loss_axes = dict(seen)["loss"]
    labels = [line.get_label() for line in loss_axes.get_lines()]
    assert labels == ["seed0", "seed1"]


def test_duplicate_steps_draw_no_back_stroke(tmp_path: Path) -> None:
    rows = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 3, "loss": 3.5},
            {"step": 2, "loss": 4.1}, {"step": 3, "loss": 3.4}, {"step": 4, "loss": 3.0}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps, values = plot.read_series(tmp_path / "metrics.jsonl")["loss"]
    assert steps == [1, 2, 3, 4] and values == [5.0, 4.1, 3.4, 3.0]  # the redone steps' values


def test_plot_bad_inputs_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a run directory" in err
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    assert main(["plot", str(tmp_path)]) == 2
    assert "not a JSON line" in capsys.readouterr().err


def test_confusion_matrix_has_titles_colour_bar_and_numbers(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    figures = []
    real_close = plot._pyplot().close
    monkeypatch.setattr(plot._pyplot(), "close", lambda fig=None: (figures.append(fig), real_close(fig)))
    out = plot.plot_confusion(tmp_path / "cm.png", np.array([[3, 1], [0, 4]]), ["cat", "dog"])
    assert Image.open(out).format == "PNG"
    fig = figures[-1]
    ax, bar = fig.axes[0], fig.axes[1]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert bar.get_ylabel() == "% of the true class"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "100", "25", "75"]
