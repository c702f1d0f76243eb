"""The checks of a `Config` that read more than one of its sections, or another part of openslip: the model
registry. Each section checks its own fields when it is built (train/config.py); `check_config` runs on every
finished config, by `make_config` and again by `train(cfg)` for a `Config` built by hand."""

from __future__ import annotations

from openslip.errors import ConfigError
from openslip.models import MODELS, model_without
from openslip.train.config import Config


def check_config(cfg: Config) -> None:
    """Raise a one-line `ConfigError` when the model, its loss terms and the image size do not fit together."""
    if cfg.model not in MODELS:
        raise ConfigError(f"model={cfg.model!r} is not a registered model; choose one of: {', '.join(MODELS)}")
    parts = MODELS.get(cfg.model)
    if parts.text is None and cfg.loss.contrastive == "sigmoid":
        raise ConfigError(f"loss.contrastive=sigmoid scores image-text pairs, but model={cfg.model} has no text tower")
    if cfg.loss.ssl == "distill" and parts.ssl_head is None:
        slip = next((m for m in MODELS.names() if model_without(m, "ssl_head") == cfg.model), None)
        use = f"use model={slip}" if slip else "use a SLIP model"
        raise ConfigError(
            f"loss.ssl=distill trains a self-distillation head on the image tower, but model={cfg.model} is CLIP-only "
            f"(no self-supervised branch): {use}, whose SimCLR head the distillation head replaces"
        )
    if cfg.data.train_images is not None and cfg.loss.ssl_scale == 0:
        raise ConfigError(
            "data.train_images gives unpaired images to the self-supervised term, which this run does not train "
            f"(model={cfg.model}, loss.ssl_scale=0): use a SLIP model, or leave data.train_images unset"
        )
    if parts.text is None and cfg.loss.clip_scale > 0:
        raise ConfigError(f"model={cfg.model} has no text tower: set loss.clip_scale=0 (SimCLR only)")
    if parts.ssl_head is None and cfg.loss.ssl_scale > 0:
        raise ConfigError(f"model={cfg.model} has no SimCLR head: set loss.ssl_scale=0 (CLIP only)")
    # A part that no loss term trains would get no gradient (DDP refuses that) and would make the data
    # pipeline render views for nothing (docs/DESIGN.md, 'Baselines are their own models').
    for part, scale, objective in (("ssl_head", "ssl_scale", "CLIP"), ("text", "clip_scale", "SimCLR")):
        if getattr(parts, part) is not None and getattr(cfg.loss, scale) == 0:
            other = model_without(cfg.model, part)
            use = f"use model={other}" if other else "use a model without it"
            raise ConfigError(
                f"model={cfg.model} with loss.{scale}=0 trains {objective} only and would carry an untrained "
                f"{'SimCLR head' if part == 'ssl_head' else 'text tower'}: {use}"
            )
    patch = parts.vision.patch_size
    if cfg.data.image_size is not None and cfg.data.image_size % patch:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} is not a multiple of {cfg.model}'s patch size {patch}"
        )
