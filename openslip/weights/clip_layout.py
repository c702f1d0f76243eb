"""OpenAI CLIP / open_clip ViT state dicts -> openslip models, with the architecture read from the shapes.

The layout (openai/CLIP `model.py`, mlfoundations/open_clip `transformer.py`): `visual.conv1` (no bias),
`visual.class_embedding` [W], `visual.positional_embedding` [N+1, W], `visual.ln_pre`,
`visual.transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`,
`visual.ln_post` (on the CLS token), `visual.proj` [W, E] applied as `x @ proj`; the text tower's names are
openslip's own. Both use LayerNorm eps 1e-5; OpenAI's weights use QuickGELU, open_clip's plain configs GELU.
Neither records the head count: both build `width // 64` heads (`head_width` below).
"""

from __future__ import annotations

import re

import torch

from openslip.errors import CheckpointError
from openslip.models.config import ACTIVATIONS, ModelConfig, TextConfig, VisionConfig
from openslip.weights.safe_load import key_summary

# OpenAI CLIP's preprocessing (openai/CLIP clip.py `_transform`, as open_clip applies it to these weights): its
# statistics, a bicubic resize of the shorter side to the crop size (crop_fraction 1), then the centre crop.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_PREPROCESS = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "crop_fraction": 1.0, "interpolation": "bicubic"}

CLIP_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by both OpenAI CLIP and open_clip
# Non-weight entries some files carry: OpenAI's TorchScript state dict (shape hints) and older open_clip's mask.
_IGNORED = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_OPENAI_HINTS = ("input_resolution", "context_length", "vocab_size")

# CLIP block names -> timm / openslip block names (suffixes under `...resblocks.N.` / `...blocks.N.`)
_BLOCK = {
    "ln_1.weight": "norm1.weight",
    "ln_1.bias": "norm1.bias",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight",
    "attn.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight",
    "ln_2.bias": "norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_VISUAL = {
    "visual.ln_pre.weight": "visual.norm_pre.weight",
    "visual.ln_pre.bias": "visual.norm_pre.bias",
    "visual.ln_post.weight": "visual.norm.weight",
    "visual.ln_post.bias": "visual.norm.bias",
    "visual.proj": "image_projection",
}
_TEXT_TOP = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection")
_VISUAL_BLOCK_RE = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.(.+)")
_TEXT_BLOCK_RE = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")


def is_clip_layout(sd: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is an OpenAI / open_clip ViT CLIP (rather than openslip / SLIP names)."""
    return "visual.conv1.weight" in sd and "visual.class_embedding" in sd


def _layers(sd: dict[str, torch.Tensor], pattern: re.Pattern[str]) -> int:
    return len({int(m.group(1)) for k in sd if (m := pattern.fullmatch(k))})


def _heads(width: int, head_width: int, tower: str) -> int:
    if head_width <= 0 or width % head_width:
        raise CheckpointError(f"{tower} width {width} is not a multiple of the head width {head_width}")
    return width // head_width


def clip_config(
    sd: dict[str, torch.Tensor], *, activation: str, head_width: int = 64, name: str = "clip_openai_vit"
) -> ModelConfig:
    """The openslip ModelConfig of a CLIP-layout state dict (sizes from its shapes; CLIP's ln_pre and eps)."""
    conv = sd["visual.conv1.weight"]  # [W, 3, p, p]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    fc = sd.get("visual.transformer.resblocks.0.mlp.c_fc.weight")
    vision = VisionConfig(
        image_size=patch * grid,
        patch_size=patch,
        width=width,
        layers=_layers(sd, _VISUAL_BLOCK_RE),
        heads=_heads(width, head_width, "vision"),
        mlp_ratio=fc.shape[0] / width if fc is not None else 4.0,
        ln_pre=True,
        patch_bias=False,
        act=activation,
        norm_eps=CLIP_NORM_EPS,
    )
    twidth = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=twidth,
        layers=_layers({k: v for k, v in sd.items() if not k.startswith("visual.")}, _TEXT_BLOCK_RE),
        heads=_heads(twidth, head_width, "text"),
        act=activation,
    )
    return ModelConfig(name=name, vision=vision, text=text, embed_dim=sd["text_projection"].shape[1], ssl_head=None)


def _activation(sd: dict[str, torch.Tensor], activation: str | None, source: str) -> str:
    if activation is not None:
        if activation not in ACTIVATIONS:
            raise CheckpointError(f"activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        return activation
    if any(k in sd for k in _OPENAI_HINTS):
        return "quick_gelu"  # only OpenAI's own release carries these entries, and it uses QuickGELU
    raise CheckpointError(
        f"{source}: an open_clip state dict does not record its MLP activation: convert it once with "
        f"`openslip convert {source} OUT --activation gelu` (quick_gelu for OpenAI weights and open_clip "
        "'-quickgelu' models) and use OUT, or in Python pass activation= to openslip.load_model"
    )


def clip_to_openslip(
    sd: dict[str, torch.Tensor], *, source: str, activation: str | None = None, head_width: int = 64
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, openslip state dict) of an OpenAI / open_clip ViT state dict; the mapping is exact."""
    missing = [k for k in ("visual.positional_embedding", "visual.proj", *_TEXT_TOP) if k not in sd]
    if missing:
        raise CheckpointError(f"{source}: a CLIP-layout state dict without {key_summary(missing)} (ViT CLIP only)")
    act = _activation(sd, activation, source)
    cfg = clip_config(sd, activation=act, head_width=head_width)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, t in sd.items():
        if key in _IGNORED:
            continue
        if key == "visual.conv1.weight":
            out["visual.patch_embed.proj.weight"] = t  # no bias: VisionConfig.patch_bias=False
        elif key == "visual.class_embedding":
            out["visual.cls_token"] = t.reshape(1, 1, -1)  # [W] -> [1, 1, W]
        elif key == "visual.positional_embedding":
            out["visual.pos_embed"] = t.unsqueeze(0)  # [N+1, W] -> [1, N+1, W]
        elif key in _VISUAL:
            out[_VISUAL[key]] = t
        elif (m := _VISUAL_BLOCK_RE.fullmatch(key)) and m.group(2) in _BLOCK:
            out[f"visual.blocks.{m.group(1)}.{_BLOCK[m.group(2)]}"] = t
        elif key in _TEXT_TOP or key == "logit_scale" or _TEXT_BLOCK_RE.fullmatch(key):
            out[key] = t  # the text tower already has openslip's (the reference's) names
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: CLIP-layout entries openslip has no place for (layer scale, attention pooling, "
            f"a Hugging Face text tower?): {key_summary(unknown)}"
        )
    if "logit_scale" not in out:
        out["logit_scale"] = torch.tensor(1 / 0.07).log().to(sd["text_projection"].dtype)
    return cfg, out


def openslip_to_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `clip_to_openslip`'s mapping: an openslip CLIP / SLIP state dict under OpenAI / open_clip names
    (the SimCLR head and a patch-projection bias, which CLIP has no place for, are left to the caller)."""
    vision_block = {v: k for k, v in _BLOCK.items()}
    vision_top = {v: k for k, v in _VISUAL.items()}
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key == "visual.patch_embed.proj.weight":
            out["visual.conv1.weight"] = t
        elif key == "visual.cls_token":
            out["visual.class_embedding"] = t.reshape(-1)  # [1, 1, W] -> [W]
        elif key == "visual.pos_embed":
            out["visual.positional_embedding"] = t.reshape(t.shape[-2:])  # [1, N+1, W] -> [N+1, W]
        elif key in vision_top:
            out[vision_top[key]] = t
        elif (m := re.fullmatch(r"visual\.blocks\.(\d+)\.(.+)", key)) and m.group(2) in vision_block:
            out[f"visual.transformer.resblocks.{m.group(1)}.{vision_block[m.group(2)]}"] = t
        elif key in _TEXT_TOP or key in ("logit_scale", "logit_bias") or _TEXT_BLOCK_RE.fullmatch(key):
            out[key] = t
    return out
