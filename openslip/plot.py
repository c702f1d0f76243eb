"""`openslip plot RUN_DIR [RUN_DIR ...]`: curves of runs' metrics.jsonl, and the confusion matrix of an evaluation.

One run: `RUN_DIR/plots/curves.png` (one panel per metric) and one PNG per metric. Several runs: the same panels
with the runs overlaid (legend by run name), in `--out DIR`. Every axis names its unit; accuracies (training
in-batch accuracies and zero-shot scores) are drawn on a fixed 0-100 % axis, so a 0.2-point dip does not look like a
collapse, with a dashed line at chance: 100 / batch for clip_acc, 100 / (2 x batch - 1) for ssl_acc (the SimCLR
anchor picks among both views of the whole batch but itself), and the evaluation's own chance for zero-shot.
A run resumed after an interruption may hold two records of a step (files written before openslip kept one per
step): the last one counts, so no curve draws back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openslip import files
from openslip.errors import UserError
from openslip.outputs import check_output_dir
from openslip.weights.atomic import atomic_file

SKIP = {"step", "time", "epoch"}
ORDER = ("loss", "clip_loss", "ssl_loss", "clip_acc", "ssl_acc", "ssl_rank", "teacher_entropy", "teacher_batch_entropy",
         "zeroshot/", "knn/", "linear/", "lr", "grad_norm", "logit_scale", "logit_bias", "teacher_momentum",
         "samples_per_s")  # fmt: skip
# metric (or prefix ending in "/") -> y-axis label
UNITS = {
    "loss": "loss (nats)",
    "clip_loss": "loss (nats)",
    "ssl_loss": "loss (nats)",
    "clip_acc": "in-batch top-1 (%)",
    "ssl_acc": "in-batch top-1 (%)",
    "ssl_rank": "effective rank (RankMe)",
    "teacher_entropy": "entropy of a teacher distribution (nats)",
    "teacher_batch_entropy": "entropy of the batch's mean teacher distribution (nats)",
    "teacher_momentum": "EMA momentum of the teacher",
    "zeroshot/": "score (%)",
    "knn/": "score (%)",
    "linear/": "score (%)",
    "lr": "learning rate",
    "grad_norm": "global gradient norm (before clipping)",
    "logit_scale": "logit scale (1 / temperature)",
    "logit_bias": "logit bias (sigmoid loss)",
    "samples_per_s": "samples / s",
    "data_wait_frac": "fraction of step time",
    "data_cpu_ms_per_sample": "loader CPU ms per sample",
    "data/": "samples",
}
PERCENT = ("clip_acc", "ssl_acc", "zeroshot/", "knn/", "linear/")  # drawn on a fixed 0-100 axis


@dataclass
class RunCurves:
    """A run's metrics: key -> (steps, values), one value per step (the last record of a step wins)."""

    name: str
    series: dict[str, tuple[list[int], list[float]]]
    chance: dict[str, float] = field(default_factory=dict)


def _matches(key: str, pattern: str) -> bool:
    return key == pattern or (pattern.endswith("/") and key.startswith(pattern))


def unit_of(key: str) -> str:
    return next((unit for pattern, unit in UNITS.items() if _matches(key, pattern)), key)


def read_series(metrics_file: Path) -> dict[str, tuple[list[int], list[float]]]:
    """metric -> (steps, values) from a metrics.jsonl file, sorted by step with one value per step (the last
    record of a step wins: a resumed run trains the steps after its checkpoint again); non-numeric values are
    left out."""
    by_step: dict[str, dict[int, float]] = {}
    for n, line in enumerate(files.read_lines(metrics_file, error=UserError, errors="replace"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{metrics_file}:{n}: not a JSON line") from None
        step = row.get("step")
        for key, value in row.items():
            if key in SKIP or isinstance(value, bool) or not isinstance(value, int | float) or step is None:
                continue
            by_step.setdefault(key, {})[int(step)] = float(value)
    return {key: (sorted(values), [values[s] for s in sorted(values)]) for key, values in by_step.items()}


def _read_chance(metrics_file: Path, run: Path) -> dict[str, float]:
    chance: dict[str, float] = {}
    for line in files.read_lines(metrics_file, error=UserError, errors="replace"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row.get("chance"), dict):
            chance.update({k: float(v) for k, v in row["chance"].items() if isinstance(v, int | float)})
    batch = _batch_size(run)
    if batch:
        chance.setdefault("clip_acc", 100.0 / batch)
        chance.setdefault("ssl_acc", 100.0 / max(2 * batch - 1, 1))
    return chance


def _batch_size(run: Path) -> int | None:
    """The global batch recorded in the run's config.yaml (sets the in-batch accuracies' chance)."""
    path = run / "config.yaml"
    if not files.is_regular(path):
        return None
    try:
        import yaml

        cfg = yaml.safe_load(files.read_text(path, limit=files.CONFIG_BYTES))
        return int(cfg["train"]["batch_size"])
    except Exception:  # an unreadable config only loses the chance lines
        return None


def read_run(run_dir: str | Path) -> RunCurves:
    run = Path(run_dir)
    metrics_file = run / "metrics.jsonl"
    if not metrics_file.is_file():
        raise UserError(f"{run} is not a run directory (no metrics.jsonl)")
    series = read_series(metrics_file)
    if not series:
        raise UserError(f"{metrics_file} holds no metrics yet")
    return RunCurves(run.resolve().name, series, _read_chance(metrics_file, run))


def _rank(key: str) -> tuple[int, str]:
    for i, prefix in enumerate(ORDER):
        if _matches(key, prefix):
            return i, key
    return len(ORDER), key


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def _panel(ax: Any, key: str, runs: list[RunCurves], title: str) -> None:
    chances = set()
    for run in runs:
        if key not in run.series:
            continue
        steps, values = run.series[key]
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, linewidth=1.2, label=run.name)
        if key in run.chance:
            chances.add(round(run.chance[key], 6))
    for c in sorted(chances):
        ax.axhline(c, color="grey", linestyle="--", linewidth=1, label=f"chance {c:.3g}%")
    if any(_matches(key, p) for p in PERCENT):
        ax.set_ylim(0, 100)
    elif key == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(unit_of(key))
    ax.grid(alpha=0.3)
    if len(runs) > 1 or chances:
        ax.legend(fontsize=8)


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Write curves.png (all panels) and one PNG per metric; several runs are overlaid. Returns the paths."""
    if not run_dirs:
        raise UserError("name at least one run directory")
    runs = [read_run(r) for r in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # two runs/x folders: tell them apart by their full paths
        for run, path in zip(runs, run_dirs, strict=True):
            run.name = str(path)
    plt = _pyplot()
    out = Path(out_dir) if out_dir else (Path(run_dirs[0]) / "plots" if len(runs) == 1 else Path("plots"))
    check_output_dir(out, option="--out", own=None)  # PNGs beside other files, but never in a run's own entries
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in runs for k in r.series}, key=_rank)
    cols = 3
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    written = []
    label = runs[0].name if len(runs) == 1 else " vs ".join(r.name for r in runs)
    for ax, key in zip(axes.flat, keys, strict=False):
        _panel(ax, key, runs, key)
        single, sax = plt.subplots(figsize=(6, 4))
        _panel(sax, key, runs, f"{label}: {key}")
        path = out / (key.replace("/", "_") + ".png")
        _save(single, path, bbox_inches="tight")
        plt.close(single)
        written.append(path)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(label)
    fig.tight_layout()
    curves = out / "curves.png"
    _save(fig, curves)
    plt.close(fig)
    return [curves, *written]


def plot_confusion(path: str | Path, matrix: Any, classnames: list[str], title: str = "") -> Path:
    """The row-normalised confusion matrix (true class = row) with axis titles, a colour bar, class labels
    (every k-th when there are many) and the percentages in the cells when it is small enough to read."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    norm = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    c = norm.shape[0]
    side = min(16.0, max(5.0, 0.35 * c + 2))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    every = max(1, math.ceil(c / 40))  # at most ~40 labels per axis
    ticks = list(range(0, c, every))
    ax.set_xticks(ticks, [classnames[i][:20] for i in ticks], rotation=90, fontsize=8)
    ax.set_yticks(ticks, [classnames[i][:24] for i in ticks], fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if c <= 15:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{norm[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 60 else "black")  # fmt: skip
    ax.set_title(title or f"confusion matrix ({c} classes, {int(counts.sum())} images)")
    out = Path(path).expanduser()
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def _save(fig: Any, path: Path, **options: Any) -> None:
    """A PNG written whole: a plot of a run being trained is redrawn while someone may be looking at it."""
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100, **options)
