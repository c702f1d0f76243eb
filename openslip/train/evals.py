"""Training's periodic evaluation through the one door of `openslip.eval.suite`: ``EVALS[name].run``.

`eval.sets` lists ``EVALNAME:SET``: an evaluation of ``EVALS`` and a set as `openslip compare --eval-sets` writes it
(a demo task, ``[CATALOG:]TEST[@TRAIN][#PROMPTS.json]``, a retrieval set). `check_eval_sets` opens every set before
the first step, so a wrong path or name stops the run at once, in one line; `evaluate` runs them at each
evaluation and reports ``EVALNAME/NAME`` (`zeroshot/demo_shapes`, `knn/NAME`), the keys of metrics.jsonl,
eval.best_metric and the plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openslip.data.demo.tasks import demo_task_names
from openslip.errors import ConfigError, UserError
from openslip.eval.catalog import check_prompt_set, get_entry
from openslip.eval.datasets import DEMO_RETRIEVAL_NAMES
from openslip.eval.features import eval_mode
from openslip.eval.metrics import chance_score
from openslip.eval.suite import EVALS, RETRIEVAL_PREFIX, EvalOptions, EvalSet, Evaluation, open_eval_set
from openslip.models import model_config
from openslip.models.config import ModelConfig
from openslip.train import best as best_ckpt
from openslip.train.config import Config

# Finetuning trains a copy of the model end to end for epochs and writes its own state: far too slow to run every
# eval.every_steps, so training refuses it (`openslip finetune` / `openslip eval finetune` on a checkpoint instead).
NOT_IN_TRAINING = {"finetune": "it trains a copy of the model for epochs: run openslip finetune on a checkpoint"}
# A text-tower evaluation scores a file set whole (the paper's ImageNet zero-shot is over all 50,000 val images);
# eval.samples is the size of a demo task, and the cap on a probe's file test set, as before eval.sets.
WHOLE_FILE_SETS = ("zeroshot", "retrieval")
# Test images are the same for every run, whatever its seed, so runs are compared on the same images.
SET_SEED = 0


@dataclass(frozen=True)
class SetEntry:
    """One item of eval.sets: ``EVALNAME:SET``."""

    text: str  # as written
    evaluation: Evaluation
    spec: str  # the set, as `open_eval_set` takes it


@dataclass
class TrainingEvals:
    """The opened sets of a run and the options every evaluation gets (built once from the config)."""

    entries: list[SetEntry]
    options: EvalOptions
    sets: dict[str, EvalSet] = field(default_factory=dict)  # entry text -> set, opened at the first evaluation
    chance: dict[str, float] = field(default_factory=dict)  # result key -> chance score (plots draw it)


def parse_entry(text: str) -> SetEntry:
    """``zeroshot:imagenet:/data/val`` -> (zeroshot, ``imagenet:/data/val``); one-line errors prefixed eval.sets."""
    name, sep, spec = text.partition(":")
    usable = [n for n in EVALS if n not in NOT_IN_TRAINING]
    if name in NOT_IN_TRAINING:
        raise ConfigError(f"eval.sets: {text!r}: {name} is not run during training; {NOT_IN_TRAINING[name]}")
    if not sep or name not in EVALS or not spec:
        raise ConfigError(
            f"eval.sets: {text!r} should be EVALNAME:SET with EVALNAME one of {', '.join(usable)} "
            "(e.g. zeroshot:demo_shapes, knn:/data/val@/data/train)"
        )
    evaluation = EVALS.get(name)
    if evaluation.kind == "retrieval" and not spec.startswith(RETRIEVAL_PREFIX) and spec not in DEMO_RETRIEVAL_NAMES:
        spec = RETRIEVAL_PREFIX + spec  # `retrieval:/data/coco.json`: the evaluation names the set's kind
    return SetEntry(text, evaluation, spec)


def build_evals(cfg: Config, device: Any) -> TrainingEvals:
    return TrainingEvals(
        entries=[parse_entry(s) for s in cfg.eval.sets],
        options=EvalOptions(device=device, seed=cfg.seed, crop_fraction=cfg.eval.crop_fraction),
    )


def open_entry(cfg: Config, entry: SetEntry, image_size: int) -> EvalSet:
    num_test = cfg.eval.samples
    if entry.evaluation.name in WHOLE_FILE_SETS and not _is_demo(entry.spec):
        num_test = None
    try:
        return open_eval_set(
            entry.spec,
            image_size=image_size,
            num_test=num_test,
            num_train=cfg.eval.train_samples,
            seed=SET_SEED,
            prompts=cfg.eval.prompts,
        )
    except UserError as err:
        raise ConfigError(f"eval.sets: {entry.text!r}: {_catalog_typo(entry.spec) or err}") from None


def _catalog_typo(spec: str) -> str | None:
    """`imagenett:/data/val` is read as a path when no catalog entry is named so; when that path is missing, the
    catalog's own line (with its `did you mean`) says more than "no such folder"."""
    prefix, sep, rest = spec.partition(":")  # a one-letter prefix is a drive (`C:/data`), a path with / no name
    if spec.startswith(RETRIEVAL_PREFIX) or not sep or not rest or "/" in prefix or "\\" in prefix or len(prefix) < 2:
        return None
    try:
        get_entry(prefix)
    except ConfigError as err:
        return str(err)
    return None


def _is_demo(spec: str) -> bool:
    return spec in demo_task_names() or spec.removeprefix(RETRIEVAL_PREFIX) in DEMO_RETRIEVAL_NAMES


def skipped(entry: SetEntry, es: EvalSet, model: ModelConfig) -> str | None:
    """Why `entry` is skipped with this model (zero-shot and retrieval need a text tower: a SimCLR run skips them,
    as the default eval.sets are zero-shot); an evaluation that cannot read its set is an error instead."""
    why = entry.evaluation.why_not(model, es)
    if why is None:
        return None
    if entry.evaluation.needs_text and model.text is None:
        return why
    raise ConfigError(f"eval.sets: {entry.text!r}: {entry.evaluation.name} does not apply: {why}")


def result_key(entry: SetEntry, es: EvalSet) -> str:
    return f"{entry.evaluation.name}/{es.name}"


def check_eval_sets(cfg: Config) -> None:
    """Open every set of eval.sets and check that eval.best_metric is one of their results: fail before training, not
    at the first evaluation."""
    try:
        check_prompt_set(cfg.eval.prompts)
    except ConfigError as err:
        raise ConfigError(f"eval.prompts: {err}") from None
    mcfg = model_config(cfg.model)
    image_size = cfg.data.image_size or mcfg.vision.image_size
    reported: dict[str, str] = {}  # the keys `evaluate` will report -> the entry reporting it
    for entry in [parse_entry(s) for s in cfg.eval.sets]:
        es = open_entry(cfg, entry, image_size)
        key = result_key(entry, es)
        if key in reported:  # one would overwrite the other in metrics.jsonl
            raise ConfigError(
                f"eval.sets: {reported[key]!r} and {entry.text!r} both report {key}: keep one (sets are named after "
                "their folder or file)"
            )
        if skipped(entry, es, mcfg) is None:
            reported[key] = entry.text
    names = list(reported)
    best_ckpt.check_best_metric(cfg.eval.best_metric, names, has_text=mcfg.text is not None)


def skip_lines(cfg: Config, model: ModelConfig) -> list[str]:
    """One start line per evaluation a model without a text tower skips."""
    if model.text is not None:
        return []
    titles = sorted({e.evaluation.title for e in map(parse_entry, cfg.eval.sets) if e.evaluation.needs_text})
    return [f"{title} evaluation skipped: {cfg.model} has no text tower (SimCLR only)" for title in titles]


def evaluate(ev: TrainingEvals, cfg: Config, model: Any) -> dict[str, float]:
    """Score (each set's metric, %) of every entry of eval.sets, in their order; every rank takes part."""
    results: dict[str, float] = {}
    for entry in ev.entries:
        if entry.text not in ev.sets:  # opened once: demo tasks render on the fly, folders are indexed once
            ev.sets[entry.text] = open_entry(cfg, entry, model.cfg.vision.image_size)
        es = ev.sets[entry.text]
        if skipped(entry, es, model.cfg) is not None:
            continue
        with eval_mode(model):  # no patch dropout, no drop-path while features are taken
            result = entry.evaluation.run(model, es, ev.options)
        key = result_key(entry, es)
        results[key] = result.metrics["score"]
        if es.kind == "classification":  # a retrieval recall has no class count to guess among
            ev.chance[key] = chance_score(es.metric, es.test.num_classes)
    return results
