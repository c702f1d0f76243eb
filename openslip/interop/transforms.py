"""A model together with its preprocessing, as open_clip's `create_model_and_transforms` hands them out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from openslip.data.augment.params import AugmentConfig
from openslip.data.augment.views import EvalTransform, SLIPTransform
from openslip.eval.preprocess import PROTOCOL_PREPROCESS
from openslip.models import MODELS, SLIP, create_model
from openslip.weights.checkpoint import load_model


def preprocess_of(model: SLIP) -> dict[str, Any]:
    """image_size, mean, std, crop_fraction, interpolation of a model: openslip's training statistics unless its
    config.json records others (weights converted from CLIP keep CLIP's; `load_model` puts them in
    `model.preprocess`)."""
    base = AugmentConfig()
    out = {
        "image_size": model.cfg.vision.image_size,
        "mean": list(base.mean),
        "std": list(base.std),
        # the reference's zero-shot transform (Resize(S) -> CenterCrop(S)), as CLIP's own eval transform
        "crop_fraction": PROTOCOL_PREPROCESS["zeroshot"].crop_fraction,
        "interpolation": "bilinear",  # antialiased, as PIL's bilinear (openslip.data.augment.views)
    }
    recorded = getattr(model, "preprocess", None) or {}
    out.update({k: v for k, v in recorded.items() if k in out})
    return out


def _augment_config(pre: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(AugmentConfig)}
    values = {"image_size": pre["image_size"], "mean": tuple(pre["mean"]), "std": tuple(pre["std"])}
    if "eval_crop_fraction" in names:
        values["eval_crop_fraction"] = pre["crop_fraction"]
    return dataclasses.replace(AugmentConfig(), **values)


def create_model_and_transforms(name_or_path: str | Path, **kwargs: Any) -> tuple[SLIP, Any, Any]:
    """(model, train transform, eval transform) for a registered model name (freshly initialised) or anything
    `openslip.load_model` reads (weights loaded, eval mode). The train transform renders the views the model's
    objectives read (`SLIPTransform`, a dict of tensors); the eval transform maps a PIL image / array to [3, S, S].

    `kwargs` go to `create_model` for a name (e.g. image_size=) and to `load_model` for a path (e.g. activation=).
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        model = create_model(name_or_path, **kwargs)
    else:
        model = load_model(name_or_path, **kwargs)
    pre = preprocess_of(model)
    aug = _augment_config(pre)
    return (
        model,
        SLIPTransform(config=aug, views=model.cfg.image_views),
        EvalTransform(config=aug, interpolation=pre["interpolation"]),
    )
