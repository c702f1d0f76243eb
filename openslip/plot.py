"""`openslip plot RUN_DIR`: PNG curves of a run's metrics.jsonl (loss terms, accuracies, lr, logit scale,
zero-shot accuracy), one panel per metric in `RUN_DIR/plots/curves.png` and one file per metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

from openslip.errors import UserError

SKIP = {"step", "time", "epoch"}
ORDER = ("loss", "clip_loss", "ssl_loss", "clip_acc", "ssl_acc", "zeroshot/", "lr", "logit_scale", "samples_per_s")


def read_series(metrics_file: Path) -> dict[str, tuple[list[int], list[float]]]:
    """metric -> (steps, values) from a metrics.jsonl file; non-numeric values are left out."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for n, line in enumerate(metrics_file.read_text().splitlines(), 1):
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
            steps, values = series.setdefault(key, ([], []))
            steps.append(step)
            values.append(float(value))
    return series


def _rank(key: str) -> tuple[int, str]:
    for i, prefix in enumerate(ORDER):
        if key == prefix or (prefix.endswith("/") and key.startswith(prefix)):
            return i, key
    return len(ORDER), key


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the PNGs; returns their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    run = Path(run_dir)
    metrics_file = run / "metrics.jsonl"
    if not metrics_file.is_file():
        raise UserError(f"{run} is not a run directory (no metrics.jsonl)")
    series = read_series(metrics_file)
    if not series:
        raise UserError(f"{metrics_file} holds no metrics yet")
    keys = sorted(series, key=_rank)
    out_dir = run / "plots"
    out_dir.mkdir(exist_ok=True)
    cols = 3
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    written = []
    for ax, key in zip(axes.flat, keys, strict=False):
        steps, values = series[key]
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        single, sax = plt.subplots(figsize=(6, 4))
        sax.plot(steps, values, marker="o" if len(steps) < 20 else None, linewidth=1.2)
        sax.set_title(f"{run.name}: {key}")
        sax.set_xlabel("step")
        sax.grid(alpha=0.3)
        path = out_dir / (key.replace("/", "_") + ".png")
        single.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(single)
        written.append(path)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(str(run))
    fig.tight_layout()
    curves = out_dir / "curves.png"
    fig.savefig(curves, dpi=100)
    plt.close(fig)
    return [curves, *written]
