"""Analytic FLOPs of a SLIP / CLIP / SimCLR training step, for MFU (docs/DESIGN.md, 'Measuring performance').

Only matrix products are counted (a multiply-add is 2 FLOPs), as `torch.utils.flop_counter` does:
linear layers, the patch-embedding convolution, attention scores and the attention-weighted values,
the projections, the SimCLR head and the similarity matrices of the losses. Norms, activations,
softmax and the optimizer are left out; they are bandwidth-bound and a few percent of the work.

Causal text attention is counted in full (L x L), as the flop counter does for SDPA with a causal mask.
A training step costs 3 x the forward (the backward computes a gradient for the input and for the
weight of every product), except the patch embedding, whose input (pixels) needs no gradient: 2 x.
Activation checkpointing recomputes the forward, which is not counted (model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass

from openslip.models.config import ModelConfig, VisionConfig
from openslip.models.vision import kept_patches


def vit_forward_flops(v: VisionConfig, image_size: int | None = None, patch_dropout: float = 0.0) -> tuple[int, int]:
    """(patch embedding, transformer blocks) forward FLOPs of one image through the ViT; with patch dropout the
    blocks run on the kept tokens only."""
    size = image_size or v.image_size
    n = (size // v.patch_size) ** 2  # patches
    t = kept_patches(n, patch_dropout) + 1  # + CLS
    d, h = v.width, int(v.width * v.mlp_ratio)
    patch = 2 * n * (3 * v.patch_size**2) * d
    per_block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * h
    return patch, v.layers * per_block


def text_forward_flops(cfg: ModelConfig, text_len: int | None = None) -> int:
    """Forward FLOPs of one caption of `text_len` tokens (default: the full context) incl. its projection."""
    t = cfg.text
    if t is None:
        return 0
    n = text_len or t.context_length
    w = t.width
    per_block = 2 * n * w * 3 * w + 2 * 2 * n * n * w + 2 * n * w * w + 2 * 2 * n * w * 4 * w
    return t.layers * per_block + 2 * w * cfg.embed_dim  # projection of the pooled (EOT) token only


def head_forward_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the SimCLR head, or of the distillation head, on one view's feature."""
    if (d := cfg.distill_head) is not None:
        return 2 * (cfg.vision.width * d.mlp_dim + d.mlp_dim * d.mlp_dim + d.mlp_dim * d.bottleneck_dim) + 2 * (
            d.bottleneck_dim * d.out_dim
        )
    h = cfg.ssl_head
    if h is None:
        return 0
    return 2 * (cfg.vision.width * h.mlp_dim + h.mlp_dim * h.mlp_dim + h.mlp_dim * h.out_dim)


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one sample of a training step, split by part (forward only, and fwd + bwd)."""

    vision: int  # all views through the ViT (blocks + patch embedding)
    text: int
    heads: int  # image projection + SimCLR head(s)
    loss: int  # similarity matrices (depend on the global batch)
    patch: int  # the patch-embedding part of `vision` (its backward has no input gradient)
    teacher: int = 0  # the EMA teacher's forward pass on the global views (loss.ssl=distill): no backward

    @property
    def forward(self) -> int:
        """The student's forward pass (what the backward pass doubles)."""
        return self.vision + self.text + self.heads + self.loss

    @property
    def train(self) -> int:
        """Forward + backward: 3 x forward, 2 x for the patch embedding; plus the teacher's forward."""
        return 3 * self.forward - self.patch + self.teacher

    def as_dict(self) -> dict[str, int]:
        return {
            "vision": self.vision,
            "text": self.text,
            "heads": self.heads,
            "loss": self.loss,
            "teacher": self.teacher,
            "forward": self.forward,
            "train": self.train,
        }


def slip_sample_flops(
    cfg: ModelConfig,
    *,
    batch_size: int,
    image_size: int | None = None,
    text_len: int | None = None,
    clip: bool | None = None,
    ssl: bool | None = None,
    patch_dropout: float = 0.0,
    local_crops: int = 0,
    local_size: int | None = None,
) -> StepFlops:
    """Per-sample FLOPs of a SLIP step: the CLIP view + caption (when `clip`) and two SimCLR views
    (when `ssl`); both default to the parts the model has. `batch_size` is the global (contrastive)
    batch, which sizes the loss matrices; `text_len` the tokens the text tower actually runs on. With a distillation
    head the SSL views are the two global views plus `local_crops` crops of `local_size`, and the teacher runs forward
    on the global views."""
    clip = cfg.text is not None if clip is None else clip
    ssl = cfg.ssl_head is not None if ssl is None else ssl
    patch, blocks = vit_forward_flops(cfg.vision, image_size, patch_dropout)
    views = int(clip) + 2 * int(ssl)
    text = text_forward_flops(cfg, text_len) if clip else 0
    heads = (2 * cfg.vision.width * cfg.embed_dim if clip else 0) + (2 * head_forward_flops(cfg) if ssl else 0)
    loss = 0
    if clip:  # image->text and text->image logits: 2 x [B, E] @ [E, B]; per sample 2 x 2 B E
        loss += 4 * batch_size * cfg.embed_dim
    if ssl and cfg.ssl_head is not None:  # four [B, O] @ [O, B] matrices; per sample 4 x 2 B O
        loss += 8 * batch_size * cfg.ssl_head.out_dim
    vision, patches, teacher = views * (patch + blocks), views * patch, 0
    if ssl and (d := cfg.distill_head) is not None:
        local_patch, local_blocks = vit_forward_flops(cfg.vision, local_size or cfg.vision.image_size, patch_dropout)
        vision += local_crops * (local_patch + local_blocks)
        patches += local_crops * local_patch
        heads += local_crops * head_forward_flops(cfg)
        loss += 2 * 2 * (2 + local_crops) * d.out_dim  # teacher x student cross-entropies [2, 2 + N] over K
        full_patch, full_blocks = vit_forward_flops(cfg.vision, image_size)  # the teacher sees every patch
        teacher = 2 * (full_patch + full_blocks + head_forward_flops(cfg))
    return StepFlops(vision=vision, text=text, heads=heads, loss=loss, patch=patches, teacher=teacher)
