"""The vision tower as a timm `VisionTransformer`: openslip's ViT already uses timm's parameter names, so the export
is its state dict (less the classifier) plus the timm model name and the constructor arguments that make it match.

timm's registered names fix the size and layout; where openslip differs (SLIP's ViT-S/16 has 12 heads like MoCo v3,
timm's `vit_small_patch16_224` has 6; the tiny test sizes have no name at all) the arguments below override them.
"""

from __future__ import annotations

from typing import Any

import torch

from openslip.errors import ConfigError
from openslip.models.config import VisionConfig

# (patch, width, depth) -> timm's name, its head count; the plain ViTs (LayerNorm eps 1e-6, GELU, no pre-norm).
_PLAIN = {
    (16, 192, 12): ("vit_tiny_patch16_224", 3),
    (16, 384, 12): ("vit_small_patch16_224", 6),
    (16, 768, 12): ("vit_base_patch16_224", 12),
    (32, 768, 12): ("vit_base_patch32_224", 12),
    (16, 1024, 24): ("vit_large_patch16_224", 16),
}
# The CLIP image towers (pre-norm, no patch bias, LayerNorm eps 1e-5); "_quickgelu" variants use QuickGELU.
_CLIP = {
    (16, 768, 12): ("vit_base_patch16_clip_224", 12),
    (32, 768, 12): ("vit_base_patch32_clip_224", 12),
    (14, 1024, 24): ("vit_large_patch14_clip_224", 16),
}
_TIMM_EPS = {False: 1e-6, True: 1e-5}  # the eps of timm's plain ViTs and of its CLIP towers


def timm_name(v: VisionConfig) -> tuple[str, bool]:
    """(the closest timm model name, whether its defaults match exactly without overrides)."""
    clip = v.ln_pre
    found = (_CLIP if clip else _PLAIN).get((v.patch_size, v.width, v.layers))
    # no registered size: timm's generic base name, every size set by the arguments
    name, heads = found or ("vit_base_patch16_clip_224" if clip else "vit_base_patch16_224", None)
    if clip and v.act == "quick_gelu":
        name = name.replace("_clip_", "_clip_quickgelu_")
    exact = heads == v.heads and v.image_size == 224 and v.mlp_ratio == 4.0 and v.norm_eps == _TIMM_EPS[clip]
    return name, exact and (clip or v.act == "gelu")


def timm_model_args(v: VisionConfig) -> dict[str, Any]:
    """Keyword arguments for `timm.create_model(name, **args)` that reproduce the tower exactly."""
    if v.ln_pre == v.patch_bias:
        raise ConfigError(
            "timm ties the patch bias to pre_norm (bias = not pre_norm); this tower has "
            f"ln_pre={v.ln_pre} and patch_bias={v.patch_bias}, which timm cannot build"
        )
    args: dict[str, Any] = {
        "img_size": v.image_size,
        "patch_size": v.patch_size,
        "embed_dim": v.width,
        "depth": v.layers,
        "num_heads": v.heads,
        "mlp_ratio": v.mlp_ratio,
        "pre_norm": v.ln_pre,
        "class_token": True,
        "global_pool": "token",
        "num_classes": 0,
    }
    if v.act == "quick_gelu":
        args["act_layer"] = "quick_gelu"
    return args


def timm_state_dict(visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tower's weights under timm's names (already openslip's), without a classifier head."""
    return {k: t.detach().cpu().contiguous() for k, t in visual.state_dict().items() if not k.startswith("head.")}


def timm_config(v: VisionConfig, preprocess: dict[str, Any]) -> dict[str, Any]:
    """config.json in the layout timm's hub loader reads (architecture, model_args, pretrained_cfg)."""
    name, exact = timm_name(v)
    notes = []
    if v.norm_eps != _TIMM_EPS[v.ln_pre]:
        notes.append(
            f"LayerNorm eps {v.norm_eps} differs from {name}'s {_TIMM_EPS[v.ln_pre]}: also pass "
            f"norm_layer=functools.partial(torch.nn.LayerNorm, eps={v.norm_eps})"
        )
    return {
        "architecture": name,
        "exact_name": exact,  # True: timm.create_model(architecture, num_classes=0) alone builds this tower
        "num_classes": 0,
        "num_features": v.width,
        "global_pool": "token",
        "model_args": timm_model_args(v),
        "norm_eps": v.norm_eps,
        "notes": notes,
        "pretrained_cfg": {
            "input_size": [3, v.image_size, v.image_size],
            "interpolation": preprocess["interpolation"],
            "crop_pct": preprocess["crop_fraction"],
            "crop_mode": "center",
            "mean": list(preprocess["mean"]),
            "std": list(preprocess["std"]),
            "num_classes": 0,
        },
    }
