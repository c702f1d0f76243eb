"""The best checkpoint: the in-training evaluation that scored best on `eval.best_metric` keeps its checkpoint.

The reference scored ImageNet zero-shot after every epoch and kept the best epoch's checkpoint; its published CC3M /
CC12M numbers are that epoch, not the last (SLIP#9). With `eval.best_metric` set, a run does the same: after each
in-training evaluation that improves the metric (strictly: a tie keeps the earlier step), that step's checkpoint is
saved (if the step saves none anyway) and `OUT_DIR/checkpoints/best` names it, with `best.json` beside it saying
`{"step", "metric", "value"}`. `ckpt.keep_last` never prunes it; the previous best goes once it is neither the best
nor among the last kept. The record travels in each checkpoint's train state, so a run stopped and resumed ends with
the same best as one that never stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openslip.errors import ConfigError
from openslip.eval.catalog import get_entry
from openslip.weights.atomic import write_json
from openslip.weights.checkpoint import BEST_FILE, checkpoint_dir_name, checkpoint_problem, write_pointer

BEST_JSON = "best.json"


@dataclass(frozen=True)
class Best:
    """The best evaluation so far: its step, the metric's name and its value."""

    step: int
    metric: str
    value: float

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "metric": self.metric, "value": self.value}

    def describe(self) -> str:
        return f"{self.metric} {self.value:.2f} at step {self.step}"


def improved(best: Best | None, results: dict[str, float], step: int, metric: str, mode: str) -> Best | None:
    """The new record when `results[metric]` beats `best` (None: it does not). A non-finite score never wins."""
    if metric not in results:  # check_best_metric refuses this before training; this guards a set that was renamed
        raise ConfigError(
            f"eval.best_metric={metric!r} is not among this evaluation's results ({', '.join(results)}): "
            "choose one of them"
        )
    value = float(results[metric])
    if not math.isfinite(value):
        return None
    if best is not None and not (value > best.value if mode == "max" else value < best.value):
        return None
    return Best(step=step, metric=metric, value=value)


def to_state(best: Best | None, mode: str) -> dict[str, Any] | None:
    """The record as plain data for train_state.pt (checkpoints hold nothing else)."""
    return None if best is None else {**best.to_json(), "mode": mode}


def from_state(state: Any, metric: str, mode: str) -> tuple[Best | None, str | None]:
    """(the record a checkpoint's train state holds for this run's metric and mode, or None; a line saying why a
    record it holds is dropped). Checkpoints from before the best checkpoint existed hold none."""
    if not metric or state is None:
        return None, None
    try:
        best = Best(step=int(state["step"]), metric=str(state["metric"]), value=float(state["value"]))
        saved_mode = str(state["mode"])
    except (TypeError, KeyError, ValueError):
        return None, f"warning: the checkpoint's best-checkpoint record is unreadable ({state!r:.80}); starting anew"
    if (best.metric, saved_mode) != (metric, mode):
        return None, (
            f"eval.best_metric / eval.best_mode changed ({best.metric} {saved_mode} -> {metric} {mode}): "
            "the best checkpoint is chosen anew from the next evaluation"
        )
    return best, None


def write_best(root: Path, best: Best) -> None:
    """`root/best.json`, then the `root/best` pointer (each written whole: a temporary file and a rename). The pointer
    last: a kill between the two leaves the pointer on the previous best, and resume writes both again."""
    write_json(root / BEST_JSON, best.to_json())  # its rename is durable before the pointer's
    write_pointer(root, checkpoint_dir_name(best.step), BEST_FILE)


def clear_best(root: Path) -> None:
    for name in (BEST_FILE, BEST_JSON):
        (root / name).unlink(missing_ok=True)


def checkpoint_exists(root: Path, best: Best) -> bool:
    return checkpoint_problem(root / checkpoint_dir_name(best.step)) is None


def check_best_metric(metric: str, names: list[str], has_text: bool) -> None:
    """Refuse, before training, a best metric that no evaluation of this run reports. `names`: the metrics this
    run's evaluations report (`zeroshot/imagenet`, `knn/demo_shapes`, ...)."""
    if not metric or metric in names:
        return
    keep_none = "or eval.best_metric='' to keep no best checkpoint"
    kind, _, name = metric.partition("/")
    if kind == "zeroshot" and not has_text:
        raise ConfigError(
            f"eval.best_metric={metric!r}: this model has no text tower, so no zero-shot score; {keep_none}"
        )
    if not names:
        raise ConfigError(
            f"eval.best_metric={metric!r} but this run evaluates nothing: add {_set_hint(kind, name)}, {keep_none}"
        )
    raise ConfigError(
        f"eval.best_metric={metric!r} is not among this run's evaluations ({', '.join(names)}): choose one of them, "
        f"or evaluate {_set_hint(kind, name)}, {keep_none}"
    )


def _set_hint(kind: str, name: str) -> str:
    """What to add to evaluate `kind/name`: `eval.sets=[zeroshot:imagenet:/PATH/imagenet/val]` for a catalog set."""
    if kind == "zeroshot":
        try:
            entry = get_entry(name)
        except ConfigError:
            return f"eval.sets=[zeroshot:PATH] with a set named {name}"
        return f"eval.sets=[zeroshot:{entry.name}:/PATH/{entry.name}/val]"
    if kind in ("knn", "linear"):
        return f"eval.sets=[{kind}:TEST@TRAIN] with a set named {name}"
    if kind == "retrieval":
        return f"eval.sets=[retrieval:PATH] with a set named {name}"
    return "an evaluation set (eval.sets=[EVALNAME:SET])"
