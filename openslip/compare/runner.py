"""`openslip compare`: pre-train every method, evaluate every model with every evaluation that applies, report.

Resumable at any point. Each training run is an ordinary `openslip train` run directory (a killed run
continues bit-exactly from its last checkpoint); each finished evaluation is two files written atomically,
its per-sample outcomes (``.npz``) and then its metrics (``.json``, the completion mark). A rerun of the
same command skips what is finished, and the results are rebuilt from those files, so an interrupted
experiment ends with the numbers of an uninterrupted one.

With ``--hparams sweep``, every method is trained at each point of its grid (``runs/METHOD_lr0.3x_seedS``) and
scored by kNN on a validation split held out of the first probe set's train side (never its test images:
``SELECT_EVAL``); the grid point with the best score, averaged over seeds, is the method's row, and only it is
evaluated on the test sets.

Layout of ``out_dir``::

    experiment.json                 the settings (a rerun with other settings is refused)
    runs/RUN_seedS/                 training runs (config.yaml, metrics.jsonl, checkpoints/), train_done.json;
                                    RUN is the method, or METHOD_lrFx (a sweep's grid point)
    evals/RUN_seedS/EVAL__SET.json  metrics of one evaluation; EVAL__SET.npz its per-sample outcomes;
                                    select__SET.json the sweep's validation score
    results.json, results.md, results.png, timings.json
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openslip import distributed, files
from openslip.compare.experiment import CompareConfig, Variant, run_key
from openslip.compare.methods import METHODS, RANDOM_ROW
from openslip.compare.report import build_results, write_reports
from openslip.compare.set_names import distinct_names
from openslip.errors import ConfigError
from openslip.eval.features import mark_untrained
from openslip.eval.suite import EVALS, EvalOptions, EvalSet, Evaluation, open_eval_set, validation_split
from openslip.models import create_model, model_config
from openslip.train.loop import train
from openslip.train.rundir import first_difference
from openslip.weights.atomic import write_json, write_npz
from openslip.weights.checkpoint import load_model

EXPERIMENT_FILE = "experiment.json"
TRAIN_DONE = "train_done.json"
EVAL_ORDER = ("zeroshot", "retrieval", "linear", "knn", "fewshot", "finetune")
# Evaluations a compare runs only when asked (--finetune, --fewshot): the CompareConfig flag of each.
OPT_IN = {"finetune": "finetune", "fewshot": "fewshot"}
# Decoded evaluation images kept in memory per set: every model reads the same images (the demo sets at
# 64 px take 60 MB), and re-rendering or re-decoding them for each model cost more than the probes.
IMAGE_MEMORY = 1 << 30
# The sweep's criterion: kNN (no settings of its own, and it applies to every method, SimCLR included) on a fifth
# of the first probe set's train split, the other four fifths as its neighbours.
SELECT_EVAL = "knn"
SELECT_FRACTION = 0.2


@dataclass
class Cell:
    """One evaluation of one model on one set: its files, or why it does not apply."""

    row: str
    seed: int
    evaluation: Evaluation
    eval_set: EvalSet
    slug: str
    reason: str | None  # None: it applies
    run: str = ""  # the trained run's name (a method, or a sweep's grid point); default: the row

    def paths(self, out: Path) -> tuple[Path, Path]:
        base = out / "evals" / run_key(self.run or self.row, self.seed) / f"{self.evaluation.name}__{self.slug}"
        return base.with_suffix(".json"), base.with_suffix(".npz")


def run_compare(cc: CompareConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) the experiment; returns results.json's content."""
    out = Path(cc.out_dir)
    base = cc.base_config()  # validates the shared settings before anything is written
    cc.check_hparams()
    check_experiment(out, cc)
    image_size = base.data.image_size or model_config(base.model).vision.image_size
    sets = [
        open_eval_set(s, image_size=image_size, num_test=cc.num_test, num_train=cc.num_train, memory_bytes=IMAGE_MEMORY)
        for s in cc.eval_sets
    ]
    for es, name in zip(sets, distinct_names(sets), strict=True):
        es.name = name  # two sets of one file name (…/a/test.csv, …/b/test.csv) get distinct columns
    slugs = _slugs([s.name for s in sets])
    evals = [EVALS.get(n) for n in EVAL_ORDER if n not in OPT_IN or getattr(cc, OPT_IN[n])]
    device = cc.device or ("cuda" if torch.cuda.is_available() else "cpu")
    timings: dict[str, float] = _read_json(out / "timings.json") or {}
    selection = _sweep(cc, sets, slugs, device, log, timings, out) if cc.mode() == "sweep" else {}
    chosen = {m: selection[m]["variant"] if m in selection else cc.variants(m)[0] for m in cc.methods}
    rows = [(RANDOM_ROW, s) for s in cc.seeds] + [(m, s) for m in cc.methods for s in cc.seeds]
    cells: list[Cell] = []
    for row, seed in rows:
        variant = chosen.get(row)
        run = variant.key if variant is not None else row
        model_cfg = model_config(cc.run_config(METHODS.get(row), seed).model if row != RANDOM_ROW else base.model)
        row_cells = [
            Cell(row, seed, ev, es, slug, ev.why_not(model_cfg, es), run)
            for es, slug in zip(sets, slugs, strict=True)
            for ev in evals
        ]
        cells += row_cells
        todo = [c for c in row_cells if c.reason is None and not c.paths(out)[0].is_file()]
        if variant is not None:
            _train(cc, variant, seed, log, timings, out)
        if not todo:
            continue
        model = _load(cc, run, seed, base, device)
        for cell in todo:
            log(f"compare: {cell.evaluation.name} on {cell.eval_set.name} of {run_key(run, seed)}")
            opts = _options(cc, device, seed, out, run, cell.slug)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                if row == RANDOM_ROW:  # the floor row is random on purpose: no "never trained" warning
                    warnings.simplefilter("ignore", UserWarning)
                result = cell.evaluation.run(model, cell.eval_set, opts)
            timings[f"{run_key(run, seed)}/{cell.evaluation.name}/{cell.slug}"] = time.perf_counter() - t0
            if distributed.is_main():
                json_path, npz_path = cell.paths(out)
                write_npz(npz_path, result.outcomes)
                write_json(json_path, _plain(result.metrics))  # last: marks the evaluation finished
                write_json(out / "timings.json", timings)
    results = (
        write_reports(build_results(cc, base, sets, slugs, cells, out, chosen=chosen, selection=selection), out)
        if distributed.is_main()
        else {}
    )
    distributed.barrier()
    return results


def _options(cc: CompareConfig, device: str, seed: int, out: Path, run: str, slug: str) -> EvalOptions:
    return EvalOptions(
        device=device,
        seed=seed,
        cache_dir=str(out / "cache"),
        finetune_epochs=cc.finetune_epochs,
        finetune_dir=str(out / "finetune" / run_key(run, seed) / slug),
    )


def _sweep(
    cc: CompareConfig,
    sets: list[EvalSet],
    slugs: list[str],
    device: str,
    log: Callable[[str], None],
    timings: dict,
    out: Path,
) -> dict[str, dict[str, Any]]:
    """Train every grid point of every method with every seed, score each on the validation split, and choose per
    method the point with the best mean score over seeds: {method: {"variant", "set", "criterion", "points"}}."""
    probe = next((i for i, es in enumerate(sets) if es.kind == "classification" and es.train is not None), None)
    if probe is None:
        raise ConfigError(
            "--hparams sweep chooses each method's lr on a validation part of a probe set's train split; give "
            "--eval-sets a demo task or a TEST@TRAIN set"
        )
    val = validation_split(sets[probe], fraction=SELECT_FRACTION)
    criterion = EVALS.get(SELECT_EVAL)
    file_name = f"select__{slugs[probe]}.json"
    selection: dict[str, dict[str, Any]] = {}
    for method in cc.methods:
        points = []
        for variant in cc.variants(method):
            scores = []
            for seed in cc.seeds:
                _train(cc, variant, seed, log, timings, out)
                path = out / "evals" / run_key(variant.key, seed) / file_name
                metrics = _read_json(path)
                if metrics is None:
                    log(f"compare: {SELECT_EVAL} on the validation split of {val.name} of {run_key(variant.key, seed)}")
                    model = _load(cc, variant.key, seed, cc.base_config(), device)
                    result = criterion.run(model, val, _options(cc, device, seed, out, variant.key, slugs[probe]))
                    metrics = _plain(result.metrics)
                    if distributed.is_main():
                        write_json(path, metrics)
                scores.append(float(metrics["score"]))
            cfg = cc.run_config(METHODS.get(method), cc.seeds[0], variant)
            points.append(
                {
                    "run": variant.key,
                    "lr": cfg.optim.lr,
                    "wd": cfg.optim.wd,
                    "validation_scores": scores,
                    "validation_mean": float(np.mean(scores)),
                }
            )
        best = max(range(len(points)), key=lambda i: points[i]["validation_mean"])  # ties: the first in grid order
        for i, point in enumerate(points):
            point["chosen"] = i == best
        selection[method] = {"variant": cc.variants(method)[best], "points": points}
        log(f"compare: {method} chooses lr {points[best]['lr']:g}, wd {points[best]['wd']:g} (validation)")
    for entry in selection.values():
        entry["set"] = sets[probe].spec
        entry["criterion"] = (
            f"{SELECT_EVAL} {val.metric} on {SELECT_FRACTION:.0%} of the train split of {sets[probe].name} "
            f"({len(val.test)} images; the other {len(val.train)} are the neighbours), mean over seeds"
        )
    return selection


def check_experiment(out: Path, cc: CompareConfig) -> None:
    """Record the experiment's settings in a new out_dir; refuse an out_dir that holds another experiment."""
    identity = json.loads(json.dumps(cc.identity()))  # tuples -> lists, as read back from the file
    path = out / EXPERIMENT_FILE
    if path.is_file():
        old = _read_json(path)
        if old is None:
            raise ConfigError(f"--out-dir {out}: {EXPERIMENT_FILE} is unreadable; use another --out-dir")
        diff = first_difference(old, identity)
        if diff:
            raise ConfigError(
                f"--out-dir {out} holds another experiment ({diff}); use another --out-dir, or the same settings"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out-dir {out} is not empty and holds no {EXPERIMENT_FILE}; use another --out-dir")
    if distributed.is_main():
        write_json(path, identity)


def _train(
    cc: CompareConfig, variant: Variant, seed: int, log: Callable[[str], None], timings: dict, out: Path
) -> None:
    run_dir = cc.run_dir(variant.key, seed)
    if (run_dir / TRAIN_DONE).is_file():
        return
    cfg = cc.run_config(METHODS.get(variant.method), seed, variant)
    key = run_key(variant.key, seed)
    log(f"compare: training {key} ({cfg.model}, {cfg.train.steps} steps, lr {cfg.optim.lr:g}, wd {cfg.optim.wd:g})")
    summary = train(cfg)
    timings[f"{key}/train"] = timings.get(f"{key}/train", 0.0) + summary["wall_s"]
    if distributed.is_main():
        done = {"steps": summary["steps"], "checkpoint": summary["checkpoint"], "metrics": summary["metrics"]}
        write_json(run_dir / TRAIN_DONE, done)
        write_json(out / "timings.json", timings)


def _load(cc: CompareConfig, run: str, seed: int, base: Any, device: str) -> Any:
    if run == RANDOM_ROW:
        torch.manual_seed(seed)
        size = {"image_size": base.data.image_size} if base.data.image_size else {}
        return mark_untrained(create_model(base.model, **size).to(device).eval())

    return load_model(cc.run_dir(run, seed), map_location=device).eval()


def _slugs(names: list[str]) -> list[str]:
    """File-name-safe, unique names of the evaluation sets, in order."""
    out: list[str] = []
    for name in names:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "set"
        while slug in out:
            slug += "_"
        out.append(slug)
    return out


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in metrics.items()}


def _read_json(path: Path) -> Any:
    try:
        return files.read_json(path)
    except files.FileError:  # missing, not a regular file, too large or not JSON: as if never written
        return None
