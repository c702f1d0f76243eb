"""An experiment of `openslip compare`: its settings, the training config of each run, and its identity.

Every method starts from the same config (a recipe, `demo` by default, with the user's shared overrides):
same data, steps, global batch, image size and seed. The model part it drops and its loss weights differ;
its learning rate and weight decay follow `--hparams` (``HPARAMS``):

- ``paper``: each objective's published values (SLIP 3e-3 / 0.1, CLIP 5e-4 / 0.5, SimCLR 3.2e-3 / 0.1), tuned
  for batch 4096 and ViT-B on YFCC15M: the default for a paper recipe only;
- ``shared``: one lr and wd for every method, the recipe's or ``optim.lr=`` / ``optim.wd=``: the default otherwise
  (at another scale, the paper's values favour one objective over another: docs/COMPARE.md);
- ``sweep``: every method trained at each point of a small grid around the shared values, the best chosen per
  method on a validation split of a probe set's train side (``openslip.compare.runner``).

`METHOD:key=value` sets a value for one method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openslip.compare.methods import DEFAULT_METHODS, METHODS, Method
from openslip.errors import ConfigError
from openslip.models import MODELS, model_without
from openslip.overrides import deep_merge, parse_overrides
from openslip.train.config import Config
from openslip.train.recipes import make_config

DEFAULT_EVAL_SETS = ("demo_shapes", "demo_colours", "demo")
HPARAMS = ("paper", "shared", "sweep")
# The sweep's grid: factors of the shared lr (x0.3, x1, x3: a decade in three steps) and of the shared wd.
SWEEP_LR = (0.3, 1.0, 3.0)
SWEEP_WD = (1.0,)
# Recipes that are not the paper's runs: their lr and wd are one setting for every method.
OWN_RECIPES = ("demo", "custom")


@dataclass(frozen=True)
class Variant:
    """One training setting of a method: the method's own (``tag`` empty) or one point of a sweep's grid."""

    method: str
    lr_factor: float = 1.0  # times the shared lr (sweep)
    wd_factor: float = 1.0  # times the shared wd (sweep)
    tag: str = ""  # "lr0.3x" ...: names the grid point's run directory

    @property
    def key(self) -> str:
        """The run's name under out_dir/runs and out_dir/evals (without its seed)."""
        return f"{self.method}_{self.tag}" if self.tag else self.method


@dataclass(kw_only=True)
class CompareConfig:
    out_dir: str = "runs/compare"  # results, runs, per-sample predictions
    methods: tuple[str, ...] = DEFAULT_METHODS  # names in openslip.compare.methods.METHODS
    seeds: tuple[int, ...] = (0,)  # every method is pre-trained once per seed
    eval_sets: tuple[str, ...] = DEFAULT_EVAL_SETS  # demo tasks, TEST[@TRAIN] sets, retrieval:SPEC / demo
    overrides: tuple[str, ...] = ()  # key.path=value for every run, METHOD:key.path=value for one method
    finetune: bool = False  # also finetune every model end to end (slow)
    finetune_epochs: int | None = None  # override the finetuning preset's epochs
    fewshot: bool = False  # also the few-shot ridge probe (`openslip eval fewshot`'s default shots and seeds)
    num_test: int | None = None  # images per test set (demo sets; None: the set's own size)
    num_train: int | None = None  # images per probe train split (demo sets; None: the set's own size)
    bootstrap: int = 1000  # bootstrap resamples for intervals and paired tests
    device: str | None = None  # evaluation device (default: the training device)
    hparams: str | None = None  # paper | shared | sweep (HPARAMS); None: paper for a paper recipe, else shared
    sweep_lr: tuple[float, ...] = SWEEP_LR  # the sweep's lr factors (of the shared lr)
    sweep_wd: tuple[float, ...] = SWEEP_WD  # the sweep's wd factors (of the shared wd)

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
        if self.hparams is not None and self.hparams not in HPARAMS:
            raise ConfigError(f"--hparams {self.hparams}: choose one of {', '.join(HPARAMS)}")
        for option, factors in (("--sweep-lr", self.sweep_lr), ("--sweep-wd", self.sweep_wd)):
            if not factors or any(not f > 0 for f in factors) or len(set(factors)) != len(factors):
                raise ConfigError(f"{option} needs distinct positive factors, e.g. 0.3,1,3")
        for option, n in (("--num-test", self.num_test), ("--num-train", self.num_train)):
            if n is not None and n < 1:
                raise ConfigError(f"{option} {n}: give a positive number of images")

    def mode(self) -> str:
        """The optimiser settings in force: `hparams`, or by default ``paper`` for a paper recipe and ``shared``
        otherwise (or whenever the user gives optim.lr / optim.wd for every method)."""
        if self.hparams is not None:
            return self.hparams
        shared, _ = self.split_overrides()
        optim = shared.get("optim")
        if isinstance(optim, dict) and ("lr" in optim or "wd" in optim):
            return "shared"
        return "shared" if self.base_config().recipe in OWN_RECIPES else "paper"

    def variants(self, method: str) -> list[Variant]:
        """The training settings of a method: one, or a sweep's grid (lr factor by wd factor)."""
        if self.mode() != "sweep":
            return [Variant(method)]
        with_wd = self.sweep_wd != SWEEP_WD
        return [
            Variant(method, lr, wd, f"lr{lr:g}x" + (f"_wd{wd:g}x" if with_wd else ""))
            for lr in self.sweep_lr
            for wd in self.sweep_wd
        ]

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

    def check_hparams(self) -> None:
        """Refuse optimiser overrides that contradict the mode (one line each)."""
        shared, own = self.split_overrides()
        mode = self.mode()
        optim = shared.get("optim") if isinstance(shared.get("optim"), dict) else {}
        given = [k for k in ("lr", "wd") if k in optim]
        if mode == "paper" and given:
            raise ConfigError(
                f"--hparams paper gives each method its paper optim.{given[0]}; drop optim.{given[0]}=, or use "
                "--hparams shared for one value for every method"
            )
        if mode == "sweep":
            for method, values in own.items():
                keys = [k for k in ("lr", "wd") if k in (values.get("optim") or {})]
                if keys:
                    raise ConfigError(
                        f"{method}:optim.{keys[0]}= with --hparams sweep: the sweep chooses each method's "
                        f"optim.{keys[0]}; give optim.{keys[0]}= for every method (the grid's centre) instead"
                    )

    def run_config(self, method: Method, seed: int, variant: Variant | None = None) -> Config:
        """The training config of `method` with `seed` (its run directory under out_dir/runs); `variant`: a grid
        point of a sweep (default: the method's own setting)."""
        variant = variant or Variant(method.name)
        shared, own = self.split_overrides()
        base = self.base_config()
        model = model_without(base.model, method.drop) if method.drop else base.model
        if model is None:
            raise ConfigError(f"no registered model is {base.model} without its {method.drop} ({method.name})")
        values = method.config_values(paper_optim=self.mode() == "paper")
        values = deep_merge(values, {"eval": {"sets": []}})  # compare evaluates at the end
        values = deep_merge(values, shared)
        values = deep_merge(values, own.get(method.name, {}))
        fixed: dict[str, Any] = {
            "model": model,
            "seed": seed,
            "out_dir": str(self.run_dir(variant.key, seed)),
            "resume": "auto",
        }
        if variant.tag:  # a grid point: factors of the shared values (the recipe's, or optim.lr= / optim.wd=)
            fixed["optim"] = {"lr": base.optim.lr * variant.lr_factor, "wd": base.optim.wd * variant.wd_factor}
        return make_config(deep_merge(values, fixed))

    def run_dir(self, run: str, seed: int) -> Path:
        """The training run of `run` (a method, or a variant's key) with `seed`."""
        return Path(self.out_dir) / "runs" / run_key(run, seed)

    def identity(self) -> dict[str, Any]:
        """What makes two experiments the same: rerunning with other settings in one out_dir is refused.

        Methods and seeds may change between reruns (finished runs are reused); everything that changes a run
        or a number may not."""
        base = self.base_config().to_dict()
        base.pop("out_dir")
        _, own = self.split_overrides()
        keep = ("eval_sets", "finetune", "finetune_epochs", "num_test", "num_train", "bootstrap")
        if self.fewshot:  # named only when on: an experiment from before the option keeps its identity
            keep += ("fewshot",)
        mode = self.mode()
        optim = {"hparams": mode}
        if mode == "sweep":
            optim.update(sweep_lr=list(self.sweep_lr), sweep_wd=list(self.sweep_wd))
        return {
            "base_config": base,
            "method_overrides": own,
            **optim,
            **{k: _jsonable(asdict(self)[k]) for k in keep},
        }


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
