"""The reports of `openslip compare`, rebuilt from the saved evaluations: results.json, .md and .png.

Rows are the random-initialisation floor and the methods; columns are (evaluation, set). A cell's value is
the set's reported metric, averaged over seeds, with a 95% bootstrap interval over test samples; with
several seeds the spread over seeds is given too. Differences of SLIP against each baseline are paired
(the same resampled test images for both), with a p-value (`openslip.eval.stats`).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

import openslip
from openslip.atomic import write_bytes, write_json
from openslip.compare.experiment import CompareConfig, run_key
from openslip.compare.methods import METHODS, RANDOM_ROW
from openslip.eval.stats import bootstrap_interval, paired_difference, score

FORMAT = "openslip-compare/1"
# SLIP against each baseline it is compared with in the paper (and CLIP with SimCLR augmentation).
CONTRASTS = (("slip", "clip"), ("slip", "simclr"), ("slip", "clip_aug"))


def write_reports(cc: CompareConfig, base: Any, sets: list, slugs: list[str], cells: list, out: Path) -> dict:
    results = build_results(cc, base, sets, slugs, cells, out)
    write_json(out / "results.json", results)
    write_bytes(out / "results.md", render_markdown(results).encode("utf-8"))
    _plot(results, out / "results.png")
    return results


def build_results(cc: CompareConfig, base: Any, sets: list, slugs: list[str], cells: list, out: Path) -> dict:
    rows = [RANDOM_ROW, *cc.methods]
    columns: list[dict[str, Any]] = []
    for es, slug in zip(sets, slugs, strict=True):
        for name in dict.fromkeys(
            c.evaluation.name for c in cells if c.eval_set is es and c.evaluation.kind == es.kind
        ):
            ev = next(c.evaluation for c in cells if c.evaluation.name == name)
            columns.append(
                {
                    "key": f"{name}/{slug}",
                    "evaluation": name,
                    "title": ev.title,
                    "set": es.name,
                    "spec": es.spec,
                    "metric": es.metric,
                    **es.baselines(),
                }
            )
    outcomes: dict[tuple[str, str], list[dict]] = {}
    records = []
    for c in cells:
        col = f"{c.evaluation.name}/{c.slug}"
        if c.reason is not None:
            continue
        json_path, npz_path = c.paths(out)
        metrics = json.loads(json_path.read_text())
        with np.load(npz_path) as z:
            outcomes.setdefault((c.row, col), []).append({k: z[k] for k in z.files})
        records.append(
            {
                "row": c.row,
                "seed": c.seed,
                "evaluation": c.evaluation.name,
                "set": c.eval_set.spec,
                "metric": metrics.get("metric"),
                "score": metrics.get("score"),
                "metrics": metrics,
                "checkpoint": _checkpoint(cc, c.row, c.seed, out),
                "predictions": str(npz_path.relative_to(out)),
            }
        )
    reasons = {(c.row, f"{c.evaluation.name}/{c.slug}"): c.reason for c in cells if c.reason is not None}
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        table[row] = {}
        for col in columns:
            runs = outcomes.get((row, col["key"]))
            if not runs:
                table[row][col["key"]] = {"applies": False, "reason": reasons.get((row, col["key"]), "not run")}
                continue
            cell = bootstrap_interval(runs, col["metric"], reps=cc.bootstrap)
            per_seed = [score(o, col["metric"]) for o in runs]
            cell.update(
                {"applies": True, "seeds": per_seed, "std": float(np.std(per_seed, ddof=1)) if len(runs) > 1 else None}
            )
            table[row][col["key"]] = cell
    differences: dict[str, dict[str, Any]] = {}
    for a, b in CONTRASTS:
        if a in rows and b in rows:
            differences[f"{a}-{b}"] = {
                col["key"]: paired_difference(
                    outcomes[(a, col["key"])], outcomes[(b, col["key"])], col["metric"], reps=cc.bootstrap
                )
                for col in columns
                if (a, col["key"]) in outcomes and (b, col["key"]) in outcomes
            }
    return {
        "format": FORMAT,
        "settings": {**cc.identity(), "methods": list(cc.methods), "seeds": list(cc.seeds)},
        "versions": _versions(),
        "rows": [{"key": r, "title": _title(r)} for r in rows],
        "columns": columns,
        "table": table,
        "differences": differences,
        "runs": {run_key(m, s): _run_info(cc, m, s) for m in cc.methods for s in cc.seeds},
        "evaluations": records,
    }


def render_markdown(results: dict) -> str:
    cols, table = results["columns"], results["table"]
    seeds = results["settings"]["seeds"]
    base = results["settings"]["base_config"]
    lines = [
        f"# openslip compare: {base['model']} on {base['data']['train']}, {base['train']['steps']} steps at "
        f"batch {base['train']['batch_size']}, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}",
        "",
        "| method | " + " | ".join(f"{c['title']} {c['set']} ({c['metric']})" for c in cols) + " |",
        "|---|" + "---|" * len(cols),
        "| chance / majority | " + " | ".join(_floor(c) for c in cols) + " |",
    ]
    for row in results["rows"]:
        lines.append(f"| {row['title']} | " + " | ".join(_cell(table[row["key"]][c["key"]]) for c in cols) + " |")
    for name, diffs in results["differences"].items():
        a, b = name.split("-", 1)
        title = f"{_title(a)} − {_title(b)}"
        lines.append(f"| {title} | " + " | ".join(_diff(diffs.get(c["key"])) for c in cols) + " |")
    several = len(seeds) > 1
    lines += [
        "",
        f"Scores in %, the set's reported metric{', mean over seeds' if several else ''}, with the 95% bootstrap "
        "interval over test images" + (" and ± the standard deviation over seeds" if several else "") + ". "
        "Differences are paired (the same resampled images for both methods), with a two-sided bootstrap p-value. "
        "— : the evaluation does not apply (zero-shot and retrieval need a text tower; probes need a train split).",
    ]
    return "\n".join(lines) + "\n"


def _cell(c: dict) -> str:
    if not c.get("applies"):
        return "—"
    spread = f" ± {c['std']:.1f}" if c.get("std") is not None else ""
    return f"{c['value']:.1f}{spread} [{c['lo']:.1f}, {c['hi']:.1f}]"


def _diff(d: dict | None) -> str:
    if d is None:
        return "—"
    return f"{d['value']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}] p={d['p']:.2g}"


def _floor(c: dict) -> str:
    return f"{c['chance']:.1f} / {c['majority']:.1f}" if "chance" in c else "—"


def _title(row: str) -> str:
    return "random init" if row == RANDOM_ROW else METHODS.get(row).title


def _checkpoint(cc: CompareConfig, row: str, seed: int, out: Path) -> str | None:
    if row == RANDOM_ROW:
        return None
    latest = cc.run_dir(row, seed) / "checkpoints" / "latest"
    return str((latest.parent / latest.read_text().strip()).relative_to(out)) if latest.is_file() else None


def _run_info(cc: CompareConfig, method: str, seed: int) -> dict[str, Any]:
    cfg = cc.run_config(METHODS.get(method), seed).to_dict()
    run_dir = cc.run_dir(method, seed)
    cfg["out_dir"] = str(run_dir.relative_to(cc.out_dir))
    curve = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row:
                curve.append([row["step"], row["loss"]])
    return {"method": method, "seed": seed, "model": cfg["model"], "config": cfg, "loss_curve": curve}


def _versions() -> dict[str, str]:
    import torch

    return {
        "openslip": openslip.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _plot(results: dict, path: Path) -> None:
    """Grouped bars with 95% intervals per column, and the training-loss curves of seed 0's runs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is in the train extra; the JSON and Markdown reports stand without it
        return
    cols, rows = results["columns"], results["rows"]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(max(10, 1.6 * len(cols) + 6), 4.5))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        cells = [results["table"][row["key"]][c["key"]] for c in cols]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(cols))]
        vals = [c["value"] if c.get("applies") else np.nan for c in cells]
        err = [
            [c["value"] - c["lo"] if c.get("applies") else 0 for c in cells],
            [c["hi"] - c["value"] if c.get("applies") else 0 for c in cells],
        ]
        bars.bar(xs, vals, width, yerr=err, capsize=2, label=row["title"])
    bars.set_xticks(range(len(cols)))
    bars.set_xticklabels([f"{c['title']}\n{c['set']}" for c in cols], fontsize=7)
    bars.set_ylabel("score (%)")
    bars.legend(fontsize=7)
    for run in results["runs"].values():
        if run["seed"] == results["settings"]["seeds"][0] and run["loss_curve"]:
            steps, losses = zip(*run["loss_curve"], strict=True)
            curves.plot(steps, losses, marker="." if len(steps) < 20 else None, label=_title(run["method"]))
    curves.set_xlabel("step")
    curves.set_ylabel("training loss (each method's own objective)")
    curves.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
