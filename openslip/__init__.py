"""openslip: SLIP / CLIP / SimCLR language-image pre-training and evaluation.

import openslip
model = openslip.create_model("slip_vit_b16")
tok = openslip.get_tokenizer()
out = model(image=x, text=tok(["a dog"]), view1=x1, view2=x2)
losses = openslip.SLIPLoss()(out)
"""

from __future__ import annotations

import importlib
from typing import Any

from openslip.version import __version__

# Public name -> module; imported on first use so `import openslip` stays light.
_LAZY = {
    "create_model": "openslip.models",
    "create_model_and_transforms": "openslip.interop.transforms",
    "list_models": "openslip.models",
    "model_config": "openslip.models",
    "ModelConfig": "openslip.models",
    "SLIP": "openslip.models",
    "get_tokenizer": "openslip.tokenizer",
    "SLIPLoss": "openslip.losses",
    "clip_loss": "openslip.losses",
    "simclr_loss": "openslip.losses",
    "load_model": "openslip.weights.checkpoint",
    "save_model": "openslip.weights.checkpoint",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'openslip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
