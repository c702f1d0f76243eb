"""The SLIP module: one ViT shared by a CLIP objective (with a text tower) and a SimCLR head (or, for
`loss.ssl=distill`, a self-distillation head).

CLIP-only and SimCLR-only are the same module with a part left out (`ModelConfig.ssl_head=None` or
`ModelConfig.text=None`), matching the reference's CLIP / SIMCLR classes parameter for parameter.
Attribute names are the reference's (`visual`, `token_embedding`, `positional_embedding`,
`transformer`, `ln_final`, `image_projection`, `text_projection`, `logit_scale`, `image_mlp`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from openslip.models.config import ModelConfig
from openslip.models.heads import DistillHead, SimCLRHead
from openslip.models.text import TextTransformer
from openslip.models.vision import VisionTransformer


def trimmed_text_length(text: torch.Tensor) -> int:
    """Tokens the text tower runs on for a batch [B, L] of token ids: up to the batch's last EOT (the EOT id 49407
    is the largest in the vocabulary, so each row's argmax is its EOT)."""
    return int(text.argmax(dim=-1).max()) + 1


def trim_tokens(text: torch.Tensor) -> torch.Tensor:
    """[B, L] token ids -> [B, L'] up to the batch's last EOT, the part the text tower reads (``SLIP.encode_text``).
    Call it while the ids are on the CPU, before they go to an accelerator: the model trims only on the CPU, since
    reading the length from a GPU would wait for it in the middle of the forward pass (and break a compiled graph)."""
    return text[:, : trimmed_text_length(text)].contiguous()


def full_context(text: torch.Tensor, context_length: int) -> torch.Tensor:
    """Trimmed token ids [B, L'] padded back to [B, context_length] with the tokenizer's padding id 0 (for the 2021
    text tower, whose positional embedding spans the whole context)."""
    return torch.nn.functional.pad(text, (0, context_length - text.shape[1]))


class SLIP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision)
        vision_width = cfg.vision.width
        # Tokens after the EOT never reach the pooled output (the mask is causal), so the text tower
        # may stop at the batch's last EOT: identical embeddings, a fraction of the work.
        self.trim_text = True
        if cfg.text is not None:
            t = cfg.text
            self.context_length = t.context_length
            self.token_embedding = nn.Embedding(t.vocab_size, t.width)
            self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
            self.transformer = TextTransformer(t.width, t.layers, t.heads, t.act)
            self.ln_final = nn.LayerNorm(t.width)
            self.image_projection = nn.Parameter(torch.empty(vision_width, cfg.embed_dim))
            self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
            if cfg.contrastive == "sigmoid":
                # SigLIP (Zhai et al., ICCV 2023, §3.2): t = exp(t') with t' = log 10, and a bias b = -10 so that the
                # N^2 - N negatives do not dominate the first steps; the bias exists only in sigmoid models, so a
                # softmax model's state dict is CLIP's / SLIP's
                self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
                self.logit_bias = nn.Parameter(torch.tensor(-10.0))
            else:
                self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
            nn.init.normal_(self.image_projection, std=vision_width**-0.5)
            nn.init.normal_(self.text_projection, std=t.width**-0.5)
        if cfg.ssl_head is not None:
            self.image_mlp = SimCLRHead(vision_width, cfg.ssl_head)
        if cfg.distill_head is not None:
            self.distill_head = DistillHead(vision_width, cfg.distill_head)

    @property
    def has_text(self) -> bool:
        return self.cfg.text is not None

    @property
    def has_logit_bias(self) -> bool:
        """Whether the model is trained with SigLIP's sigmoid loss (it then has a learned `logit_bias`)."""
        return self.cfg.text is not None and self.cfg.contrastive == "sigmoid"

    @property
    def has_ssl_head(self) -> bool:
        return self.cfg.ssl_head is not None

    @property
    def has_distill_head(self) -> bool:
        return self.cfg.distill_head is not None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        if self.has_text:
            self.transformer.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay beyond the ndim < 2 rule (the reference decays these too)."""
        return set()

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, embed_dim] unnormalised CLIP image embedding."""
        if not self.has_text:
            raise ValueError(f"{self.cfg.name} has no image-text projection (SimCLR-only model); use .visual")
        check_image_batch(image, "encode_image")
        return self.visual(image) @ self.image_projection

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, embed_dim] unnormalised text embedding, pooled at the EOT token. On a CPU the
        tower stops at the batch's last EOT; on a GPU, ids trimmed with ``trim_tokens`` before the copy save the same
        work (the result is the same either way)."""
        if not self.has_text:
            raise ValueError(f"{self.cfg.name} has no text tower (SimCLR-only model)")
        check_token_batch(text)
        eot = text.argmax(dim=-1)  # the EOT id (49407) is the largest in the vocabulary
        if self.trim_text and text.device.type == "cpu":  # elsewhere the caller trims on the host: trim_tokens
            text = text[:, : trimmed_text_length(text)]
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]  # [B, L, D]
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection  # [B, embed_dim]

    def forward(
        self,
        image: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        view1: torch.Tensor | None = None,
        view2: torch.Tensor | None = None,
        local: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Embeds whatever is given; keys: image_embed, text_embed, logit_scale (logit_bias for a sigmoid model),
        view1_embed, view2_embed (SimCLR head); distill_embed, global_logits, local_logits (distillation head:
        `local` is [B, N, 3, s, s], the N local crops of each sample)."""
        feats = self.forward_features(image=image, text=text, view1=view1, view2=view2, local=local)
        return self.forward_heads(feats)

    def forward_features(
        self,
        image: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        view1: torch.Tensor | None = None,
        view2: torch.Tensor | None = None,
        local: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The per-sample part: ViT features of each view ([B, width]; local crops [B, N, width]) and text embeddings
        ([B, embed_dim]).

        Nothing here mixes samples, so it can run in micro-batches (exact gradient accumulation);
        `forward_heads` holds everything that may (the BatchNorm head).
        """
        views = {k: v for k, v in (("image", image), ("view1", view1), ("view2", view2)) if v is not None}
        if ("view1" in views or "view2" in views) and not (self.has_ssl_head or self.has_distill_head):
            raise ValueError(f"{self.cfg.name} has no SimCLR head; do not pass view1/view2")
        if local is not None and not self.has_distill_head:
            raise ValueError(f"{self.cfg.name} has no distillation head; do not pass local crops")
        if "image" in views and not self.has_text:
            raise ValueError(f"{self.cfg.name} has no image-text projection (SimCLR-only model); omit image=")
        if local is not None:  # [B, N, 3, s, s] -> N*B crops of one size, run with the views of that size
            views["local"] = local.flatten(0, 1)
        feats = self._visual_many(list(views.values()))
        out = {f"{name}_feat": f for name, f in zip(views, feats, strict=True)}
        if local is not None:
            out["local_feat"] = out["local_feat"].unflatten(0, local.shape[:2])  # [B, N, width]
        if text is not None:
            out["text_embed"] = self.encode_text(text)
        return out

    def forward_heads(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Projections, the SimCLR head and the temperature, applied to `forward_features`' output."""
        out: dict[str, torch.Tensor] = {}
        if "image_feat" in feats:
            out["image_embed"] = feats["image_feat"] @ self.image_projection
        for name in ("view1", "view2"):
            if f"{name}_feat" in feats and self.has_ssl_head:
                # The head runs once per view so BatchNorm sees each view's own statistics (reference).
                out[f"{name}_embed"] = self.image_mlp(feats[f"{name}_feat"])
        if self.has_distill_head and "view1_feat" in feats:
            # the student's outputs for every crop: the two global views and the local crops (DINO §3.1)
            globals_ = torch.stack([feats["view1_feat"], feats["view2_feat"]], dim=1)  # [B, 2, width]
            embed, out["global_logits"] = self.distill_head(globals_)  # [B, 2, bottleneck], [B, 2, K]
            out["distill_embed"] = embed[:, 0]  # view 1's unit embedding: its effective rank shows collapse
            if "local_feat" in feats:
                out["local_logits"] = self.distill_head(feats["local_feat"])[1]  # [B, N, K]
        if "text_embed" in feats:
            out["text_embed"] = feats["text_embed"]
        if self.has_text:
            out["logit_scale"] = self.logit_scale.exp()
        if self.has_logit_bias:
            out["logit_bias"] = self.logit_bias
        return out

    def _visual_many(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """One ViT call per image size (the global views together, the local crops together): the ViT has no batch
        statistics, so this is exact."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(images):
            groups.setdefault(tuple(x.shape[1:]), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        for members in groups.values():
            if len(members) == 1:
                out[members[0]] = self.visual(images[members[0]])
                continue
            feats = self.visual(torch.cat([images[i] for i in members]))
            for i, f in zip(members, feats.split([images[i].shape[0] for i in members]), strict=True):
                out[i] = f
        return out  # type: ignore[return-value]


def check_image_batch(image: object, what: str) -> None:
    """A one-line answer for what open_clip users pass: a single image [3, H, W], a PIL image, a list."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"{what} takes a float tensor [B, 3, H, W], not a {type(image).__name__}: preprocess first "
            "(openslip.create_model_and_transforms gives the transform), then stack the images"
        )
    if image.ndim == 3:
        raise ValueError(
            f"{what} takes a batch [B, 3, H, W], got one image {list(image.shape)}: add a batch dimension with x[None]"
        )


def check_token_batch(text: object) -> None:
    """A one-line answer for raw strings (open_clip users tokenize with `tokenizer(texts)` as well)."""
    if isinstance(text, str) or (isinstance(text, list | tuple) and any(isinstance(t, str) for t in text)):
        raise TypeError(
            "encode_text takes token ids [B, 77], not strings: tokenize first, tok = openslip.get_tokenizer(); "
            'model.encode_text(tok(["a dog"]))'
        )
    if not isinstance(text, torch.Tensor):
        raise TypeError(f"encode_text takes a LongTensor of token ids [B, 77], not a {type(text).__name__}")
    if text.ndim == 1:
        raise ValueError("encode_text takes a batch of token ids [B, 77], got one row: add a batch dimension, t[None]")
