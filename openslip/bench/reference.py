"""The original SLIP code, from a user's checkout, timed beside openslip (`openslip bench train --compare-reference`).

The built-in baseline (`bench/baseline.py`) restates what the 2021 code did on openslip's own weights. This module
runs the 2021 code itself, so the ratio can be checked against the true reference: it imports ``models.py`` and
``losses.py`` from the checkout (which need the packages the reference needs, timm among them), builds the model
by its constructor name (``SLIP_VITS16`` for ``slip_vit_s16``), its loss with ``models.get_loss`` and its
optimizer as the reference's ``main.py`` does (AdamW; no weight decay for parameters with ndim < 2 or named
``bias``, ``ln`` or ``bn``), and times the step of its training loop: forward under autocast, loss, scaled
backward, optimizer step, ``zero_grad(set_to_none=True)`` and the logit-scale clamp.

One process, no process group: the reference's SyncBatchNorm layers become BatchNorm over the local batch
(what SyncBatchNorm computes on one process), so the model runs on a CPU as well. Timed in the same process
as openslip, interleaved step by step on synthetic inputs (the model-only phase); the reference's data loader
is not timed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openslip.errors import ConfigError
from openslip.models.flops import slip_sample_flops
from openslip.models.slip import full_context
from openslip.models.variants import REFERENCE_SIZE_NAMES
from openslip.optim import clamp_logit_scale, param_groups
from openslip.step import PhaseClock, autocast, timed_step


def reference_name(model: str) -> str:
    """openslip's registry name -> the reference's constructor: ``slip_vit_s16`` -> ``SLIP_VITS16``."""
    kind, _, size = model.partition("_")
    return f"{kind.upper()}_{REFERENCE_SIZE_NAMES.get(size, size.upper().replace('_', ''))}"


def import_reference(path: str | Path) -> tuple[Any, Any]:
    """The checkout's ``models`` and ``losses`` modules (one-line error when they cannot be imported)."""
    root = Path(path).expanduser().resolve()
    if not (root / "models.py").is_file() or not (root / "losses.py").is_file():
        raise ConfigError(f"--compare-reference {path}: no models.py and losses.py there (a checkout of SLIP?)")
    for name in ("models", "losses", "utils"):  # names another package may have claimed in this process
        sys.modules.pop(name, None)
    sys.path.insert(0, str(root))
    try:
        load_timm_registry()
        return importlib.import_module("models"), importlib.import_module("losses")
    except Exception as err:  # noqa: BLE001 - the checkout's own imports (timm, its version) fail in many ways
        raise ConfigError(f"--compare-reference {path}: cannot import the reference code: {err}") from None
    finally:
        sys.path.remove(str(root))


def load_timm_registry() -> None:
    """Import ``timm.models.registry`` when this timm has it. The 2021 ``models.py`` decorates a model with
    ``@timm.models.registry.register_model`` after a bare ``import timm``: timm 0.4 imported that module with the
    package, timm >= 0.9 keeps it as a module of its own that nothing imports, so the attribute lookup fails
    ("module 'timm.models' has no attribute 'registry'") unless it is imported first. Without timm, or with a timm
    that lacks the module, this does nothing: the checkout's own import then names what is missing."""
    try:
        with warnings.catch_warnings():  # timm 1.x warns that the module moved (to timm.models._registry)
            warnings.simplefilter("ignore")
            importlib.import_module("timm.models.registry")
    except ImportError:
        pass


def checkout_info(path: str | Path) -> dict[str, Any]:
    """What a comparison was measured against: the checkout's commit and whether its files differ from it (None
    for both outside a git checkout), and the timm version the reference's models were built with."""
    root = Path(path).expanduser().resolve()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):  # no git on this machine, or a hung file system
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    try:
        timm = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        timm = None
    return {"commit": commit, "modified": None if status is None else bool(status), "timm": timm}


def local_batchnorm(module: nn.Module) -> nn.Module:
    """Replace SyncBatchNorm by BatchNorm1d with the same parameters and buffers (one process: the same math)."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm1d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            local_batchnorm(child)
    return module


def main_py_optimizer(model: nn.Module, lr: float, wd: float, betas: tuple[float, float], eps: float):
    """AdamW with the two groups of the reference's main.py: its name rule ("bias", "ln" or "bn" anywhere in the
    name, as the checkout's module names need) on top of openslip's ndim < 2 rule."""
    names = {n for n, _ in model.named_parameters() if "bias" in n or "ln" in n or "bn" in n}
    return torch.optim.AdamW(
        param_groups(model, wd, no_decay_names=names), lr=lr, betas=betas, eps=eps, weight_decay=wd
    )


class ReferenceStepper:
    """Timed training steps of the reference's own model, loss and optimizer (same interface as `bench.Stepper`)."""

    label = "reference"

    def __init__(self, path: str | Path, trainer: Any, *, name: str | None, batch_size: int, image_size: int) -> None:
        models, _ = import_reference(path)
        self.name = name or reference_name(trainer.cfg.model)
        build = getattr(models, self.name, None)
        if not callable(build):
            known = sorted(k for k, v in vars(models).items() if "_VIT" in k and callable(v))
            raise ConfigError(f"the reference has no model {self.name!r}; it has: {', '.join(known)}")
        cfg = trainer.cfg
        self.device = trainer.dist.device
        self.precision = cfg.train.precision
        head = trainer.model.cfg.ssl_head
        dims = {"ssl_mlp_dim": head.mlp_dim, "ssl_emb_dim": head.out_dim} if head is not None else {}
        self.model = local_batchnorm(build(**dims)).to(self.device).train()
        self.loss = models.get_loss(self.name, cfg.loss.ssl_temperature, cfg.loss.ssl_scale)
        o = cfg.optim
        self.optimizer = main_py_optimizer(self.model, o.lr, o.wd, o.betas, o.eps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        # the reference's positional forward arguments: (image, text) for its CLIP part, then (aug1, aug2) for
        # its SimCLR part, as main.py lists its inputs; read from the model's towers, not from its name
        mcfg = trainer.model.cfg
        self.context_length = mcfg.text.context_length if mcfg.text is not None else 0
        self.arguments = (("image", "text") if mcfg.text is not None else ()) + (
            ("view1", "view2") if mcfg.ssl_head is not None else ()
        )
        # FLOPs as the 2021 way counts them: the full text context, every patch
        self.flops = float(slip_sample_flops(trainer.model.cfg, batch_size=batch_size, image_size=image_size).train)
        self.flops *= batch_size

    def step(self, get_inputs: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, float], float]:
        times, _ = timed_step(self.device, get_inputs, self._step)
        return times, self.flops

    def _full(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """The inputs as the 2021 model takes them: its text tower reads the whole context, not trimmed ids."""
        return full_context(value, self.context_length) if key == "text" else value

    def _step(self, inputs: dict[str, torch.Tensor], clock: PhaseClock) -> None:
        """The reference's training step (main.py's loop body), phase by phase."""
        with autocast(self.device.type, self.precision):
            outputs = self.model(*(self._full(k, inputs[k]) for k in self.arguments))
            loss = self.loss(outputs)["loss"]
        clock.lap("forward")
        self.scaler.scale(loss).backward()
        clock.lap("backward")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.model.zero_grad(set_to_none=True)
        clamp_logit_scale(self.model)  # the reference's clamp to [0, ln 100]
        clock.lap("optimizer")
