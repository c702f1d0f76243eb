"""Models: the SLIP module, its towers, the variant table and `create_model`."""

from __future__ import annotations

from openslip.models.config import HeadConfig, ModelConfig, TextConfig, VisionConfig
from openslip.models.slip import SLIP
from openslip.models.variants import MODELS, model_config, model_without, with_distill_head
from openslip.models.vision import VisionTransformer


def list_models() -> list[str]:
    """Registered model names (reference names such as "SLIP_VITB16" are accepted as aliases)."""
    return MODELS.names()


def create_model(name_or_config: str | ModelConfig, **overrides: object) -> SLIP:
    """Build a freshly initialised model by registry name (or from a `ModelConfig`)."""
    if "pretrained" in overrides:  # open_clip's create_model(name, pretrained=...): weights load another way here
        raise TypeError(
            "openslip.create_model builds a freshly initialised model and takes no pretrained=...: load weights "
            "with openslip.load_model(PATH) (a run directory, a checkpoint, or a file made by `openslip convert`)"
        )
    cfg = name_or_config if isinstance(name_or_config, ModelConfig) else model_config(name_or_config, **overrides)
    return SLIP(cfg)


__all__ = [
    "HeadConfig",
    "ModelConfig",
    "SLIP",
    "TextConfig",
    "VisionConfig",
    "VisionTransformer",
    "create_model",
    "list_models",
    "model_config",
    "model_without",
    "with_distill_head",
]
