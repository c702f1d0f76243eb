"""An openslip CLIP / SLIP model as an open_clip `CLIP`: the model config open_clip builds it from, and its state dict.

open_clip (mlfoundations/open_clip, `model.py`) builds the image tower one of two ways, and openslip picks the one
that computes what openslip computes:

- **native** (`VisionTransformer`): OpenAI's layout. `no_ln_pre` drops the LayerNorm before the first block (SLIP's
  timm-layout ViT has none), `norm_kwargs={"eps": ...}` sets the LayerNorm eps (SLIP: 1e-6, CLIP: 1e-5), and the
  patch convolution has no bias: a patch-projection bias `b` is folded into the patch rows of the position embedding
  (conv(x) + b + pos = conv(x) + (pos + b), exact up to the rounding of one addition). Its MLP activation comes from
  the model-wide `quick_gelu` flag, shared with the text tower: faithful only when both towers use the same one.
- **timm** (`TimmModel`: `timm_model_name`, `timm_pool`, `timm_proj`): a timm ViT trunk, always GELU, so a SLIP model
  (GELU image tower, QuickGELU text tower, as in the SLIP reference) keeps both activations. Released open_clip builds
  the trunk from the timm name alone (no size arguments), so this is faithful only where a timm name is the tower
  exactly at its own image size (`slip_vit_b16` = `vit_base_patch16_224`, `slip_vit_l16` = `vit_large_patch16_224`).

Everything else (a SLIP tower of a size timm does not name, a SimCLR-only model) is refused in one line. The text
tower is open_clip's `TextTransformer` with openslip's (the reference's) parameter names, pooled at the largest
token id (`pool_type="argmax"`, open_clip's default), LayerNorm eps 1e-5 in both.
"""

from __future__ import annotations

from typing import Any

import torch

from openslip.errors import ConfigError
from openslip.interop.timm_layout import _PLAIN, timm_name
from openslip.models import SLIP
from openslip.models.config import ModelConfig, TextConfig, VisionConfig
from openslip.weights.clip_layout import CLIP_NORM_EPS, clip_to_openslip, openslip_to_clip

NATIVE, TIMM = "native", "timm"


def open_clip_route(cfg: ModelConfig) -> str:
    """NATIVE or TIMM: the open_clip image tower that reproduces `cfg.vision` exactly; ConfigError when none does."""
    if cfg.text is None:
        raise ConfigError(
            f"{cfg.name} is SimCLR-only: open_clip's CLIP needs a text tower (export its image tower with "
            "--format timm or onnx)"
        )
    v, t = cfg.vision, cfg.text
    if v.act == t.act:
        return NATIVE
    name, exact = timm_name(v)
    if exact and not (v.ln_pre and v.patch_bias):  # timm's CLIP towers have no patch bias to hold it
        return TIMM
    raise ConfigError(
        f"open_clip cannot hold {cfg.name} faithfully: its image tower uses {v.act} and its text tower {t.act}, but "
        "open_clip's own towers share one activation (the quick_gelu flag), and its timm tower is built from a timm "
        f"name alone, which no timm ViT matches (patch {v.patch_size}, width {v.width}, {v.layers} layers, "
        f"{v.heads} heads at {v.image_size} px; timm's {name} is the nearest)"
    )


def open_clip_model_cfg(model: SLIP) -> dict[str, Any]:
    """The `model_cfg` open_clip's `create_model` builds the model from (keys of its CLIPVisionCfg / CLIPTextCfg;
    only non-defaults of the newer ones, so that older open_clip releases read it too)."""
    cfg = model.cfg
    route = open_clip_route(cfg)
    v, t = cfg.vision, cfg.text
    assert t is not None  # open_clip_route refuses a SimCLR-only model
    if route == NATIVE:
        vision: dict[str, Any] = {
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "width": v.width,
            "layers": v.layers,
            "head_width": v.width // v.heads,  # open_clip builds width // head_width heads
            "mlp_ratio": v.mlp_ratio,
        }
        if not v.ln_pre:
            vision["no_ln_pre"] = True
        if v.norm_eps != CLIP_NORM_EPS:
            vision["norm_kwargs"] = {"eps": v.norm_eps}
    else:
        vision = {
            "image_size": v.image_size,
            "timm_model_name": timm_name(v)[0],
            "timm_model_pretrained": False,
            "timm_pool": "token",  # the CLS token after the final norm, as openslip's ViT
            "timm_proj": "linear",
            "timm_proj_bias": False,  # openslip's image_projection has no bias
        }
    out: dict[str, Any] = {
        "embed_dim": cfg.embed_dim,
        "quick_gelu": t.act == "quick_gelu",  # the text tower's (and a native image tower's) activation
        "vision_cfg": vision,
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
        },
    }
    if model.has_logit_bias:  # SigLIP's learned bias (open_clip's SigLIP configs set init_logit_bias)
        out["init_logit_bias"] = float(model.logit_bias.detach())
    return out


def open_clip_state_dict(model: SLIP) -> dict[str, torch.Tensor]:
    """The model's weights under open_clip's names for the route `open_clip_route` picks (no SimCLR head)."""
    route = open_clip_route(model.cfg)
    sd = {k: t.detach().cpu() for k, t in model.state_dict().items() if not k.startswith("image_mlp.")}
    if route == NATIVE:
        out = openslip_to_clip(sd)
        bias = sd.get("visual.patch_embed.proj.bias")  # [W]
        if bias is not None:  # conv(x) + b + pos = conv(x) + (pos + b): the bias moves into the patch rows
            pos = out["visual.positional_embedding"].clone()  # [N+1, W]
            pos[1:] += bias
            out["visual.positional_embedding"] = pos
    else:
        out = {k: t for k, t in sd.items() if not k.startswith("visual.") and k != "image_projection"}
        for k, t in sd.items():
            if k.startswith("visual.") and not k.startswith("visual.head."):
                out["visual.trunk." + k.removeprefix("visual.")] = t  # timm's names are openslip's own
        if not model.cfg.vision.patch_bias:  # timm's plain ViT has a patch bias: zero is the same tower
            out["visual.trunk.patch_embed.proj.bias"] = torch.zeros_like(sd["visual.norm.bias"])
        out["visual.head.proj.weight"] = sd["image_projection"].T  # [W, E] applied as x @ P -> Linear [E, W]
    return {k: t.contiguous() for k, t in out.items()}


def openslip_from_open_clip(
    model_cfg: dict[str, Any], sd: dict[str, torch.Tensor], *, name: str = "open_clip_export"
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The inverse, for an export of `open_clip_model_cfg` / `open_clip_state_dict`: (config, openslip state dict).
    A folded patch bias stays in the position embedding (the config says patch_bias=False)."""
    vc, tc = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    text_act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    text = TextConfig(
        context_length=tc["context_length"],
        vocab_size=tc["vocab_size"],
        width=tc["width"],
        layers=tc["layers"],
        heads=tc["heads"],
        act=text_act,
    )
    if "timm_model_name" in vc:
        plain = [(k, h) for k, (n, h) in _PLAIN.items() if n == vc["timm_model_name"]]
        if not plain:  # the export writes timm's plain ViT names only (SLIP's layout)
            raise ValueError(f"{name}: timm tower {vc['timm_model_name']!r} is not one openslip exports")
        (patch, width, layers), heads = plain[0]
        vision = VisionConfig(image_size=224, patch_size=patch, width=width, layers=layers, heads=heads)
        out = {k: t for k, t in sd.items() if not k.startswith("visual.")}
        for k, t in sd.items():
            if k.startswith("visual.trunk."):
                out["visual." + k.removeprefix("visual.trunk.")] = t
        out["image_projection"] = sd["visual.head.proj.weight"].T
    else:
        vision = VisionConfig(
            image_size=vc["image_size"],
            patch_size=vc["patch_size"],
            width=vc["width"],
            layers=vc["layers"],
            heads=vc["width"] // vc["head_width"],
            mlp_ratio=vc["mlp_ratio"],
            ln_pre=not vc.get("no_ln_pre", False),
            act=text_act,
            norm_eps=(vc.get("norm_kwargs") or {}).get("eps", CLIP_NORM_EPS),
            patch_bias=False,
        )
        clip_sd = {k: t for k, t in sd.items() if k != "logit_bias"}
        _, out = clip_to_openslip(clip_sd, source=name, activation=text_act, head_width=vc["head_width"])
        if "logit_bias" in sd:
            out["logit_bias"] = sd["logit_bias"]
    contrastive = "sigmoid" if "init_logit_bias" in model_cfg else "softmax"
    cfg = ModelConfig(
        name=name, vision=vision, text=text, embed_dim=model_cfg["embed_dim"], ssl_head=None, contrastive=contrastive
    )
    return cfg, out
