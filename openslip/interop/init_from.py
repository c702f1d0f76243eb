"""`init_from=PATH`: start a training run from any weights `load_model` reads (openslip checkpoint or run, a
converted or raw OpenAI / open_clip file): the optimizer, schedule and step start fresh; parts the source lacks
(SLIP's SimCLR head when starting from CLIP) keep their usual initialisation and are listed in the run's log."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from openslip.errors import CheckpointError, ConfigError
from openslip.models import SLIP, ModelConfig
from openslip.weights.checkpoint import (
    CHECKPOINTS_DIR,
    find_latest_checkpoint,
    load_checkpoint_config,
    load_model,
    resolve_checkpoint,
)
from openslip.weights.safe_load import key_summary


def load_source(path: str) -> SLIP:
    try:
        return load_model(path)
    except CheckpointError as err:
        raise ConfigError(f"init_from={path}: {err}") from None


def resume_or_source(init_from: str | None, resume: str, out_dir: str) -> tuple[SLIP | None, ModelConfig | None]:
    """(the weights to start from, the config whose layout to adopt). A run about to resume from a checkpoint takes
    the layout from it and loads no source: its weights are overwritten anyway, and the source may have moved."""
    if not init_from:
        return None, None
    found = None
    if resume == "auto" and (Path(out_dir) / CHECKPOINTS_DIR).is_dir():
        found = find_latest_checkpoint(out_dir)
    elif resume not in ("auto", "none"):
        found = resolve_checkpoint(resume)
    if found is not None:
        return None, ModelConfig.from_dict(load_checkpoint_config(found)["model"])
    source = load_source(init_from)
    return source, source.cfg


def adopt_layout(target: ModelConfig, source: ModelConfig) -> ModelConfig:
    """`target`'s sizes and heads with the source's layout options (CLIP's ln_pre, activation, eps, no patch
    bias), so a registered model (say slip_vit_b16) can start from CLIP weights of the same size."""
    v = source.vision
    vision = replace(target.vision, ln_pre=v.ln_pre, act=v.act, norm_eps=v.norm_eps, patch_bias=v.patch_bias)
    text = target.text
    if text is not None and source.text is not None:
        text = replace(text, act=source.text.act)
    return replace(target, vision=vision, text=text)


def _parts(keys: list[str]) -> str:
    """Module prefixes of state-dict keys with counts, e.g. `image_mlp (10 tensors)`."""
    counts: dict[str, int] = {}
    for k in keys:
        part = k.split(".")[0]
        counts[part] = counts.get(part, 0) + 1
    return ", ".join(f"{p} ({n} tensor{'s' if n > 1 else ''})" for p, n in counts.items())


def init_weights_from(model: SLIP, source: SLIP, path: str) -> list[str]:
    """Copy every entry of `source` into `model`; returns the log lines (what was taken, what kept its init).
    A shape mismatch is a one-line ConfigError."""
    src = source.state_dict()
    dst = model.state_dict()
    shapes = [
        f"{k} {list(src[k].shape)} vs {list(t.shape)}" for k, t in dst.items() if k in src and src[k].shape != t.shape
    ]
    if shapes:
        raise ConfigError(
            f"init_from={path}: weights do not fit model {model.cfg.name!r} (source vs model): {key_summary(shapes)}"
        )
    fresh = [k for k in dst if k not in src]
    unused = [k for k in src if k not in dst]
    with torch.no_grad():
        for k, t in dst.items():
            if k in src:
                t.copy_(src[k])
    lines = [f"init_from {path}: {len(dst) - len(fresh)} of {len(dst)} tensors loaded; optimizer and step start fresh"]
    if fresh:
        lines.append(f"init_from: not in the source, initialised as usual: {_parts(fresh)}")
    if unused:
        lines.append(f"init_from: in the source but not in {model.cfg.name}, left out: {_parts(unused)}")
    return lines
