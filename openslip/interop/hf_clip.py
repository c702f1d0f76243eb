"""The CLIP part of an openslip model as a Hugging Face transformers `CLIPModel` (config.json + state dict).

transformers' `CLIPVisionTransformer` (models/clip/modeling_clip.py) is OpenAI's layout with nothing optional: a
bias-free patch convolution, a LayerNorm before the first block (`pre_layrnorm`), `post_layernorm` on the CLS token,
and per tower `hidden_act` (gelu | quick_gelu) and `layer_norm_eps`. openslip maps onto it as follows:

- a patch-projection bias is folded into the patch rows of the position embedding (exact up to one addition's
  rounding: conv(x) + b + pos = conv(x) + (pos + b));
- a tower without `ln_pre` (every timm-layout SLIP / CLIP ViT openslip trains) has no exact mapping: a LayerNorm
  cannot be the identity, and the residual stream that leaves it is not scale-free (biases, the residual adds), so
  the export is refused rather than written unfaithfully (docs/INTEROP.md gives the measured difference);
- the text tower pools at the largest token id, as openslip and OpenAI do: `eos_token_id: 2`, the value of OpenAI's
  own hub configs, selects exactly that pooling in transformers (any other id pools at that id's first position).

The SimCLR head and a SigLIP `logit_bias` have no place in a `CLIPModel`; the caller says so.
"""

from __future__ import annotations

from typing import Any

import torch

from openslip.errors import ConfigError
from openslip.models import SLIP
from openslip.models.config import ModelConfig, TextConfig, VisionConfig

TEXT_NORM_EPS = 1e-5  # openslip's text LayerNorms are nn.LayerNorm's default, as CLIP's
# OpenAI's hub configs (openai/clip-vit-*): bos 0, pad 1 and the legacy eos 2 that means "pool at the argmax"
_TEXT_IDS = {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}
# openslip block suffix -> transformers encoder-layer suffix (the packed qkv is split into q, k, v)
_VISION_LAYER = {
    "norm1": "layer_norm1",
    "attn.proj": "self_attn.out_proj",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_TEXT_LAYER = {
    "ln_1": "layer_norm1",
    "attn.out_proj": "self_attn.out_proj",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def check_hf_faithful(cfg: ModelConfig) -> None:
    """ConfigError (one line) when a `CLIPModel` cannot compute what `cfg` computes."""
    if cfg.text is None:
        raise ConfigError(
            f"{cfg.name} is SimCLR-only: a transformers CLIPModel needs a text tower (export its image tower with "
            "--format timm or onnx)"
        )
    if not cfg.vision.ln_pre:
        raise ConfigError(
            "a transformers CLIPModel cannot hold this model faithfully: its image tower has no LayerNorm before the "
            "first block (timm / SLIP layout) and CLIPModel always applies one (pre_layrnorm); use --format open_clip, "
            "timm or openslip"
        )


def hf_clip_config(model: SLIP) -> dict[str, Any]:
    """config.json of a transformers `CLIPModel` (model_type "clip") with the model's sizes."""
    cfg = model.cfg
    check_hf_faithful(cfg)
    v, t = cfg.vision, cfg.text
    assert t is not None
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": float(model.logit_scale.detach()),
        "initializer_factor": 1.0,
        "torch_dtype": str(model.logit_scale.dtype).removeprefix("torch."),
        "text_config": {
            "model_type": "clip_text_model",
            "hidden_size": t.width,
            "intermediate_size": 4 * t.width,  # openslip's text MLP is 4x wide, as CLIP's
            "num_attention_heads": t.heads,
            "num_hidden_layers": t.layers,
            "max_position_embeddings": t.context_length,
            "vocab_size": t.vocab_size,
            "hidden_act": t.act,
            "layer_norm_eps": TEXT_NORM_EPS,
            "projection_dim": cfg.embed_dim,
            **_TEXT_IDS,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio),
            "num_attention_heads": v.heads,
            "num_hidden_layers": v.layers,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_act": v.act,
            "layer_norm_eps": v.norm_eps,
            "projection_dim": cfg.embed_dim,
        },
    }


def hf_clip_state_dict(model: SLIP) -> dict[str, torch.Tensor]:
    """The CLIP part's weights under transformers' `CLIPModel` names."""
    check_hf_faithful(model.cfg)
    sd = {k: t.detach().cpu() for k, t in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    v, tv = "vision_model", "text_model"
    pos = sd["visual.pos_embed"][0].clone()  # [N+1, W]
    if "visual.patch_embed.proj.bias" in sd:
        pos[1:] += sd["visual.patch_embed.proj.bias"]  # the bias moves into the patch rows
    out[f"{v}.embeddings.class_embedding"] = sd["visual.cls_token"].reshape(-1)
    out[f"{v}.embeddings.patch_embedding.weight"] = sd["visual.patch_embed.proj.weight"]
    out[f"{v}.embeddings.position_embedding.weight"] = pos
    for p in ("weight", "bias"):
        out[f"{v}.pre_layrnorm.{p}"] = sd[f"visual.norm_pre.{p}"]
        out[f"{v}.post_layernorm.{p}"] = sd[f"visual.norm.{p}"]
        out[f"{tv}.final_layer_norm.{p}"] = sd[f"ln_final.{p}"]
    for i in range(model.cfg.vision.layers):
        src, dst = f"visual.blocks.{i}", f"{v}.encoder.layers.{i}"
        for p in ("weight", "bias"):
            for name, t in zip("qkv", sd[f"{src}.attn.qkv.{p}"].chunk(3), strict=True):
                out[f"{dst}.self_attn.{name}_proj.{p}"] = t
            for a, b in _VISION_LAYER.items():
                out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]
    text = model.cfg.text
    assert text is not None
    for i in range(text.layers):
        src, dst = f"transformer.resblocks.{i}", f"{tv}.encoder.layers.{i}"
        for p in ("weight", "bias"):
            for name, t in zip("qkv", sd[f"{src}.attn.in_proj_{p}"].chunk(3), strict=True):
                out[f"{dst}.self_attn.{name}_proj.{p}"] = t
            for a, b in _TEXT_LAYER.items():
                out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]
    out[f"{tv}.embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    out[f"{tv}.embeddings.position_embedding.weight"] = sd["positional_embedding"]
    out["visual_projection.weight"] = sd["image_projection"].T  # x @ P [W, E] -> Linear weight [E, W]
    out["text_projection.weight"] = sd["text_projection"].T
    out["logit_scale"] = sd["logit_scale"]
    return {k: t.contiguous() for k, t in out.items()}


def openslip_from_hf_clip(
    config: dict[str, Any], sd: dict[str, torch.Tensor], *, name: str = "hf_export"
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The inverse, for an export of `hf_clip_config` / `hf_clip_state_dict`: (config, openslip state dict). A folded
    patch bias stays in the position embedding (patch_bias=False)."""
    vc, tc = config["vision_config"], config["text_config"]
    vision = VisionConfig(
        image_size=vc["image_size"],
        patch_size=vc["patch_size"],
        width=vc["hidden_size"],
        layers=vc["num_hidden_layers"],
        heads=vc["num_attention_heads"],
        mlp_ratio=vc["intermediate_size"] / vc["hidden_size"],
        ln_pre=True,
        act=vc["hidden_act"],
        norm_eps=vc["layer_norm_eps"],
        patch_bias=False,
    )
    text = TextConfig(
        context_length=tc["max_position_embeddings"],
        vocab_size=tc["vocab_size"],
        width=tc["hidden_size"],
        layers=tc["num_hidden_layers"],
        heads=tc["num_attention_heads"],
        act=tc["hidden_act"],
    )
    cfg = ModelConfig(name=name, vision=vision, text=text, embed_dim=config["projection_dim"], ssl_head=None)
    v, tv = "vision_model", "text_model"
    out: dict[str, torch.Tensor] = {
        "visual.cls_token": sd[f"{v}.embeddings.class_embedding"].reshape(1, 1, -1),
        "visual.patch_embed.proj.weight": sd[f"{v}.embeddings.patch_embedding.weight"],
        "visual.pos_embed": sd[f"{v}.embeddings.position_embedding.weight"].unsqueeze(0),
        "token_embedding.weight": sd[f"{tv}.embeddings.token_embedding.weight"],
        "positional_embedding": sd[f"{tv}.embeddings.position_embedding.weight"],
        "image_projection": sd["visual_projection.weight"].T,
        "text_projection": sd["text_projection.weight"].T,
        "logit_scale": sd["logit_scale"],
    }
    for p in ("weight", "bias"):
        out[f"visual.norm_pre.{p}"] = sd[f"{v}.pre_layrnorm.{p}"]
        out[f"visual.norm.{p}"] = sd[f"{v}.post_layernorm.{p}"]
        out[f"ln_final.{p}"] = sd[f"{tv}.final_layer_norm.{p}"]
    for i in range(vision.layers):
        src, dst = f"{v}.encoder.layers.{i}", f"visual.blocks.{i}"
        for p in ("weight", "bias"):
            out[f"{dst}.attn.qkv.{p}"] = torch.cat([sd[f"{src}.self_attn.{n}_proj.{p}"] for n in "qkv"])
            for a, b in _VISION_LAYER.items():
                out[f"{dst}.{a}.{p}"] = sd[f"{src}.{b}.{p}"]
    for i in range(text.layers):
        src, dst = f"{tv}.encoder.layers.{i}", f"transformer.resblocks.{i}"
        for p in ("weight", "bias"):
            out[f"{dst}.attn.in_proj_{p}"] = torch.cat([sd[f"{src}.self_attn.{n}_proj.{p}"] for n in "qkv"])
            for a, b in _TEXT_LAYER.items():
                out[f"{dst}.{a}.{p}"] = sd[f"{src}.{b}.{p}"]
    return cfg, out
