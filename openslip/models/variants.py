"""The variant table and the model registry: `{slip,clip,simclr}_{size}` built from one SLIP module.

Sizes follow the SLIP reference (ViT-S/16 with 12 heads as in MoCo v3, ViT-B/16, ViT-L/16, all with
the CLIP text tower of 12 layers x 512 wide x 8 heads and a 512-d joint embedding), plus tiny
variants that train on a laptop CPU in minutes.
"""

from __future__ import annotations

from dataclasses import replace

from openslip.models.config import DistillHeadConfig, HeadConfig, ModelConfig, TextConfig, VisionConfig
from openslip.registry import Registry

# size -> (vision tower, text tower, joint embedding width, SimCLR head)
SIZES: dict[str, tuple[VisionConfig, TextConfig, int, HeadConfig]] = {
    "vit_s16": (VisionConfig(width=384, layers=12, heads=12), TextConfig(), 512, HeadConfig()),
    "vit_b16": (VisionConfig(width=768, layers=12, heads=12), TextConfig(), 512, HeadConfig()),
    "vit_l16": (VisionConfig(width=1024, layers=24, heads=16), TextConfig(), 512, HeadConfig()),
    # CPU-sized: 64 px / patch 16 -> 16 tokens; trains on the demo world in minutes.
    "vit_tiny": (
        VisionConfig(image_size=64, patch_size=16, width=192, layers=4, heads=3),
        TextConfig(width=128, layers=4, heads=4),
        128,
        HeadConfig(mlp_dim=512, out_dim=128),
    ),
    # Test-sized: 32 px / patch 8 -> 16 tokens; a forward-backward takes milliseconds.
    "vit_micro": (
        VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=2),
        TextConfig(width=64, layers=2, heads=2),
        64,
        HeadConfig(mlp_dim=128, out_dim=32),
    ),
}
# size -> the self-distillation head that replaces the SimCLR head with loss.ssl=distill: DINO's head for the paper
# sizes (MLP 2048, bottleneck 256, 65,536 prototypes); the CPU sizes scale it down with the SimCLR head.
DISTILL_HEADS: dict[str, DistillHeadConfig] = {
    "vit_s16": DistillHeadConfig(),
    "vit_b16": DistillHeadConfig(),
    "vit_l16": DistillHeadConfig(),
    "vit_tiny": DistillHeadConfig(mlp_dim=512, bottleneck_dim=128, out_dim=4096),
    "vit_micro": DistillHeadConfig(mlp_dim=128, bottleneck_dim=32, out_dim=256),
}
KINDS = ("slip", "clip", "simclr")
# The SLIP reference's factory names (models.py), kept as aliases so its checkpoints' args resolve.
REFERENCE_SIZE_NAMES = {"vit_s16": "VITS16", "vit_b16": "VITB16", "vit_l16": "VITL16"}

MODELS: Registry[ModelConfig] = Registry("model")


def _make(kind: str, size: str) -> ModelConfig:
    vision, text, embed_dim, head = SIZES[size]
    return ModelConfig(
        name=f"{kind}_{size}",
        vision=replace(vision),
        text=replace(text) if kind != "simclr" else None,
        embed_dim=embed_dim,
        ssl_head=replace(head) if kind != "clip" else None,
    )


for _kind in KINDS:
    for _size in SIZES:
        _ref = REFERENCE_SIZE_NAMES.get(_size)
        MODELS.register(f"{_kind}_{_size}", _make(_kind, _size), aliases=(f"{_kind.upper()}_{_ref}",) if _ref else ())


def model_config(name: str, **overrides: object) -> ModelConfig:
    """The config of a registered model, a fresh copy; `overrides` set top-level fields or
    `image_size` / `head_norm` shortcuts."""
    base = MODELS.get(name)
    cfg = ModelConfig.from_dict(base.to_dict())
    if (size := overrides.pop("image_size", None)) is not None:
        cfg.vision = replace(cfg.vision, image_size=int(size))
    if (norm := overrides.pop("head_norm", None)) is not None:
        if cfg.ssl_head is None:
            raise ValueError(f"{name} has no SimCLR head to set head_norm on")
        cfg.ssl_head = replace(cfg.ssl_head, norm=str(norm))
    return replace(cfg, **overrides) if overrides else cfg


def model_without(name: str, part: str) -> str | None:
    """The registered model equal to `name` less `part` ("text" or "ssl_head"), e.g. slip_vit_b16 less its
    SimCLR head is clip_vit_b16; None when there is none."""
    base = MODELS.get(name).to_dict()
    want = {**base, part: None}
    for other in MODELS.names():
        cfg = MODELS.get(other).to_dict()
        if {**cfg, "name": base["name"]} == want:
            return other
    return None


def with_distill_head(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with its SimCLR head replaced by the self-distillation head of its size (`loss.ssl=distill`)."""
    if cfg.ssl_head is None and cfg.distill_head is None:
        raise ValueError(f"{cfg.name} has no self-supervised head to replace with a distillation head")
    size = cfg.name.split("_", 1)[-1]
    return replace(cfg, ssl_head=None, distill_head=replace(DISTILL_HEADS.get(size, DistillHeadConfig())))
