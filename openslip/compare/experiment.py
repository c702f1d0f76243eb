"""An experiment of `openslip compare`: its settings, the training config of each run, and its identity.

Every method starts from the same config (a recipe, `demo` by default, with the user's shared overrides):
same data, steps, global batch, image size and seed. Only the model part it drops, its loss weights and
its objective's paper lr / wd differ, unless the user overrides them (for all methods with `key=value`, for
one with `METHOD:key=value`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openslip.compare.methods import DEFAULT_METHODS, METHODS, Method
from openslip.config import Config, deep_merge, parse_overrides
from openslip.errors import ConfigError
from openslip.models import MODELS, model_without
from openslip.recipes import make_config

DEFAULT_EVAL_SETS = ("demo_shapes", "demo_colours", "demo")


@dataclass(kw_only=True)
class CompareConfig:
    out_dir: str = "runs/compare"  # results, runs, per-sample predictions
    methods: tuple[str, ...] = DEFAULT_METHODS  # names in openslip.compare.methods.METHODS
    seeds: tuple[int, ...] = (0,)  # every method is pre-trained once per seed
    eval_sets: tuple[str, ...] = DEFAULT_EVAL_SETS  # demo tasks, TEST[@TRAIN] sets, retrieval:SPEC / demo
    overrides: tuple[str, ...] = ()  # key.path=value for every run, METHOD:key.path=value for one method
    finetune: bool = False  # also finetune every model end to end (slow)
    finetune_epochs: int | None = None  # override the finetuning preset's epochs
    num_test: int | None = None  # images per test set (demo sets; None: the set's own size)
    num_train: int | None = None  # images per probe train split (demo sets; None: the set's own size)
    bootstrap: int = 1000  # bootstrap resamples for intervals and paired tests
    device: str | None = None  # evaluation device (default: the training device)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("--methods is empty; choose from: " + ", ".join(METHODS.names()))
        self.methods = tuple(METHODS.canonical(m) for m in self.methods)
        if len(set(self.methods)) != len(self.methods) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("--methods and --seeds must not repeat a value")
        if not self.seeds:
            raise ConfigError("--seeds is empty")
        if not self.eval_sets:
            raise ConfigError("--eval-sets is empty")
        if self.bootstrap < 100:
            raise ConfigError(f"--bootstrap {self.bootstrap}: use at least 100 resamples")

    def split_overrides(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(shared values, {method: its own values}) parsed from `overrides`."""
        shared: list[str] = []
        own: dict[str, list[str]] = {}
        for item in self.overrides:
            head, sep, rest = item.partition(":")
            if sep and "=" not in head:  # METHOD:key=value (a value may itself hold a colon)
                own.setdefault(METHODS.canonical(head), []).append(rest)
            else:
                shared.append(item)
        return parse_overrides(shared), {m: parse_overrides(v) for m, v in own.items()}

    def base_config(self) -> Config:
        """The shared config every run starts from (validated; its model must be a SLIP model)."""
        shared, _ = self.split_overrides()
        model = shared.get("model")
        if isinstance(model, str) and model in MODELS:  # before the config's own checks, which assume one run
            _check_slip(model)
        base = make_config(shared)
        _check_slip(base.model)  # a recipe may name a baseline model
        return base

    def run_config(self, method: Method, seed: int) -> Config:
        """The training config of `method` with `seed` (its run directory under out_dir/runs)."""
        shared, own = self.split_overrides()
        base = self.base_config()
        model = model_without(base.model, method.drop) if method.drop else base.model
        if model is None:
            raise ConfigError(f"no registered model is {base.model} without its {method.drop} ({method.name})")
        values = deep_merge(method.config_values(), {"eval": {"zeroshot": []}})  # compare evaluates at the end
        values = deep_merge(values, shared)
        values = deep_merge(values, own.get(method.name, {}))
        fixed = {"model": model, "seed": seed, "out_dir": str(self.run_dir(method.name, seed)), "resume": "auto"}
        return make_config(deep_merge(values, fixed))

    def run_dir(self, row: str, seed: int) -> Path:
        return Path(self.out_dir) / "runs" / run_key(row, seed)

    def identity(self) -> dict[str, Any]:
        """What makes two experiments the same: rerunning with other settings in one out_dir is refused.

        Methods and seeds may change between reruns (finished runs are reused); everything that changes a run
        or a number may not."""
        base = self.base_config().to_dict()
        base.pop("out_dir")
        _, own = self.split_overrides()
        keep = ("eval_sets", "finetune", "finetune_epochs", "num_test", "num_train", "bootstrap")
        return {"base_config": base, "method_overrides": own, **{k: _jsonable(asdict(self)[k]) for k in keep}}


def _check_slip(model: str) -> None:
    parts = MODELS.get(model)
    if parts.text is None or parts.ssl_head is None:
        raise ConfigError(
            f"model={model}: compare derives every method from a SLIP model (text tower and SimCLR head); "
            "pass model=slip_... (or recipe=slip_...)"
        )


def run_key(row: str, seed: int) -> str:
    return f"{row}_seed{seed}"


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The first key path at which two JSON-like values differ, with both values; None when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if old != new:
        return f"{path or 'settings'}: {old!r} then, {new!r} now"
    return None
