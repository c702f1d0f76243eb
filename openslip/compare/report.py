"""The reports of `openslip compare`, rebuilt from the saved evaluations: results.json, .md and .png.

Rows are the random-initialisation floor and the methods, each with the lr and wd it trained with; columns
are (evaluation, set), each with its metric and prompts. A cell's value is the set's reported metric, averaged
over seeds, with a 95% interval: over test samples with one seed, over test samples and seeds with several
(`openslip.eval.stats`), and then ± the standard deviation over seeds. Differences of SLIP against each baseline
are paired (the same test images, the same seeds), with a p-value.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from openslip import files
from openslip.compare.experiment import CompareConfig, Variant, run_key
from openslip.compare.methods import METHODS, RANDOM_ROW
from openslip.eval.stats import bootstrap_interval, paired_difference, score
from openslip.version import __version__
from openslip.weights.atomic import atomic_file, write_bytes, write_json

FORMAT = "openslip-compare/2"  # 2: hparams, prompts, seed-aware intervals
# SLIP against each baseline it is compared with in the paper (and CLIP with SimCLR augmentation).
CONTRASTS = (("slip", "clip"), ("slip", "simclr"), ("slip", "clip_aug"))


HPARAMS_TEXT = {
    "paper": "each objective's published lr and wd (tuned for batch 4096, ViT-B, YFCC15M)",
    "shared": "one lr and wd for every method",
    "sweep": "each method's best lr / wd of a grid, chosen on a validation split of a probe set's train side",
}


def write_reports(results: dict, out: Path) -> dict:
    """Write `build_results`' document as results.json, results.md and results.png; returns it."""
    write_json(out / "results.json", results)
    write_bytes(out / "results.md", render_markdown(results).encode("utf-8"))
    _plot(results, out / "results.png")
    return results


def build_results(
    cc: CompareConfig,
    base: Any,
    sets: list,
    slugs: list[str],
    cells: list,
    out: Path,
    *,
    chosen: dict[str, Variant],
    selection: dict[str, dict[str, Any]],
) -> dict:
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
                    **es.prompts(),  # metric, and for classification the prompts zero-shot used
                    **es.baselines(),
                }
            )
    by_seed: dict[tuple[str, str], dict[int, dict]] = {}
    records = []
    for c in cells:
        col = f"{c.evaluation.name}/{c.slug}"
        if c.reason is not None:
            continue
        json_path, npz_path = c.paths(out)
        metrics = files.read_json(json_path)
        with files.open_regular(npz_path, "rb") as f, np.load(f) as z:
            by_seed.setdefault((c.row, col), {})[c.seed] = {k: z[k] for k in z.files}
        record = {
            "row": c.row,
            "seed": c.seed,
            "run": run_key(c.run or c.row, c.seed),
            "evaluation": c.evaluation.name,
            "set": c.eval_set.spec,
            "metric": metrics.get("metric"),
            "score": metrics.get("score"),
            "metrics": metrics,
            "checkpoint": _checkpoint(cc, c.run or c.row, c.seed, out),
            "predictions": str(npz_path.relative_to(out)),
        }
        if c.evaluation.name == "zeroshot":
            record["prompts"] = c.eval_set.prompts()
        records.append(record)
    # one run per seed, in the experiment's seed order: the differences pair a's and b's runs of each seed
    outcomes = {k: [v[s] for s in cc.seeds if s in v] for k, v in by_seed.items()}
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
            differences[f"{a}-{b}"] = {}
            for col in columns:
                runs_a, runs_b = by_seed.get((a, col["key"]), {}), by_seed.get((b, col["key"]), {})
                paired = [s for s in cc.seeds if s in runs_a and s in runs_b]  # each seed's runs, side by side
                if paired:
                    differences[f"{a}-{b}"][col["key"]] = {
                        **paired_difference(
                            [runs_a[s] for s in paired],
                            [runs_b[s] for s in paired],
                            col["metric"],
                            reps=cc.bootstrap,
                        ),
                        "seeds": len(paired),
                    }
    mode = cc.mode()
    row_optim = {RANDOM_ROW: {"lr": None, "wd": None, "run": None}}
    for m in cc.methods:
        cfg = cc.run_config(METHODS.get(m), cc.seeds[0], chosen[m])
        row_optim[m] = {"lr": cfg.optim.lr, "wd": cfg.optim.wd, "run": chosen[m].key}
    hparams: dict[str, Any] = {"mode": mode, "description": HPARAMS_TEXT[mode], "rows": row_optim}
    if selection:
        first = next(iter(selection.values()))
        hparams["sweep"] = {
            "lr_factors": list(cc.sweep_lr),
            "wd_factors": list(cc.sweep_wd),
            "set": first["set"],
            "criterion": first["criterion"],
            "points": {m: entry["points"] for m, entry in selection.items()},
        }
    trained = [(m, v) for m in cc.methods for v in (cc.variants(m) if selection else [chosen[m]])]
    return {
        "format": FORMAT,
        "settings": {**cc.identity(), "methods": list(cc.methods), "seeds": list(cc.seeds)},
        "versions": _versions(),
        "hparams": hparams,
        "statistics": {
            "seeds": len(cc.seeds),
            "intervals": "95%, over test images" if len(cc.seeds) == 1 else "95%, over test images and seeds",
            "method": (
                "percentile bootstrap over test images (paired for differences); seed-to-seed variation is not "
                "measured with one seed"
                if len(cc.seeds) == 1
                else "Student t with se² = (spread over seeds)² / seeds + (bootstrap se over test images)², "
                "Welch–Satterthwaite degrees of freedom; differences paired by image and seed"
            ),
        },
        "rows": [{"key": r, "title": _title(r), **row_optim[r]} for r in rows],
        "columns": columns,
        "table": table,
        "differences": differences,
        "runs": {run_key(v.key, s): _run_info(cc, v, s, chosen=v == chosen[m]) for m, v in trained for s in cc.seeds},
        "evaluations": records,
    }


def render_markdown(results: dict) -> str:
    cols, table = results["columns"], results["table"]
    seeds = results["settings"]["seeds"]
    base = results["settings"]["base_config"]
    hp = results["hparams"]
    several = len(seeds) > 1
    lines = [
        f"# openslip compare: {base['model']} on {base['data']['train']}, {base['train']['steps']} steps at "
        f"batch {base['train']['batch_size']}, {len(seeds)} seed{'s' if several else ''} "
        f"({', '.join(map(str, seeds))})",
        "",
        f"Optimiser settings: --hparams {hp['mode']}, {hp['description']}.",
    ]
    if "sweep" in hp:
        sw = hp["sweep"]
        lines.append(
            f"Sweep: lr x {', '.join(f'{f:g}' for f in sw['lr_factors'])}"
            + (f", wd x {', '.join(f'{f:g}' for f in sw['wd_factors'])}" if sw["wd_factors"] != [1.0] else "")
            + f" of the shared values; chosen by {sw['criterion']}."
        )
    lines += [
        "",
        "| method | lr / wd | " + " | ".join(f"{c['title']} {c['set']} ({c['metric']})" for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
        "| chance / majority | | " + " | ".join(_floor(c) for c in cols) + " |",
    ]
    for row in results["rows"]:
        optim = f"{row['lr']:.2g} / {row['wd']:.2g}" if row.get("lr") is not None else "—"
        cells = " | ".join(_cell(table[row["key"]][c["key"]]) for c in cols)
        lines.append(f"| {row['title']} | {optim} | {cells} |")
    for name, diffs in results["differences"].items():
        a, b = name.split("-", 1)
        title = f"{_title(a)} − {_title(b)}"
        lines.append(f"| {title} | | " + " | ".join(_diff(diffs.get(c["key"])) for c in cols) + " |")
    if several:
        spread = (
            f"mean over {len(seeds)} seeds ± their standard deviation, with a 95% interval over test images and "
            "seeds (Student t: the seeds' spread and the images' bootstrap, docs/COMPARE.md). Differences are "
            "paired (the same images and seeds for both methods), with a two-sided p-value"
        )
    else:
        spread = (
            "with a 95% bootstrap interval over test images only: with 1 seed, seed-to-seed variation (often "
            "larger) is not measured; rerun with --seeds 0,1,2 for intervals that include it. Differences are "
            "paired (the same resampled images for both methods), with a two-sided bootstrap p-value"
        )
    lines += [
        "",
        f"Scores in %, the set's reported metric, {spread}. "
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


def _checkpoint(cc: CompareConfig, run: str, seed: int, out: Path) -> str | None:
    if run == RANDOM_ROW:
        return None
    latest = cc.run_dir(run, seed) / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    return str((latest.parent / files.read_text(latest, limit=files.POINTER_BYTES).strip()).relative_to(out))


def _run_info(cc: CompareConfig, variant: Variant, seed: int, *, chosen: bool) -> dict[str, Any]:
    method = variant.method
    cfg = cc.run_config(METHODS.get(method), seed, variant).to_dict()
    run_dir = cc.run_dir(variant.key, seed)
    cfg["out_dir"] = str(run_dir.relative_to(cc.out_dir))
    curve = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in files.read_lines(metrics):
            row = json.loads(line)
            if "loss" in row:
                curve.append([row["step"], row["loss"]])
    return {
        "method": method,
        "seed": seed,
        "model": cfg["model"],
        "lr": cfg["optim"]["lr"],
        "wd": cfg["optim"]["wd"],
        "chosen": chosen,  # the run behind the method's row (False: a sweep's other grid points)
        "config": cfg,
        "loss_curve": curve,
    }


def _versions() -> dict[str, str]:
    import torch

    return {
        "openslip": __version__,
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
    # one colour per row, the same in both panels (the loss curves have no random-init row)
    colour = {row["key"]: f"C{i}" for i, row in enumerate(rows)}
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
        bars.bar(xs, vals, width, yerr=err, capsize=2, label=row["title"], color=colour[row["key"]])
    bars.set_xticks(range(len(cols)))
    bars.set_xticklabels([f"{c['title']}\n{c['set']}" for c in cols], fontsize=7)
    bars.set_ylabel("score (%)")
    bars.legend(fontsize=7)
    for run in results["runs"].values():
        if run["seed"] == results["settings"]["seeds"][0] and run["loss_curve"] and run["chosen"]:
            steps, losses = zip(*run["loss_curve"], strict=True)
            marker = "." if len(steps) < 20 else None
            curves.plot(steps, losses, marker=marker, label=_title(run["method"]), color=colour[run["method"]])
    curves.set_xlabel("step")
    curves.set_ylabel("training loss (each method's own objective)")
    curves.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
