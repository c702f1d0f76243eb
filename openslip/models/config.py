"""Typed model configs: a model is fully described by one `ModelConfig` (saved with every checkpoint)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from openslip.losses import CONTRASTIVES

HEAD_NORMS = ("bn", "ln", "none")
# MLP activations: "gelu" (timm, SLIP, open_clip's default configs) or "quick_gelu" (OpenAI CLIP, x * sigmoid(1.702 x))
ACTIVATIONS = ("gelu", "quick_gelu")


def _check_act(where: str, act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"{where} activation {act!r}; choose one of: {', '.join(ACTIVATIONS)}")


@dataclass(kw_only=True)
class VisionConfig:
    """A ViT image tower (timm `VisionTransformer` layout, CLS-token output)."""

    image_size: int = 224  # input side in pixels; other sizes work by interpolating the position embedding
    patch_size: int = 16  # side of the square patches
    width: int = 768  # token width
    layers: int = 12  # transformer blocks
    heads: int = 12  # attention heads (ViT-S/16 uses 12, as in the SLIP reference / MoCo v3)
    mlp_ratio: float = 4.0  # hidden width of each block's MLP relative to `width`
    # The OpenAI / open_clip ViT layout (Radford et al. 2021): a LayerNorm on the embedded tokens before the first
    # block (`ln_pre`, timm's `pre_norm=True`), QuickGELU in OpenAI's weights, LayerNorm eps 1e-5.
    ln_pre: bool = False
    act: str = "gelu"
    norm_eps: float = 1e-6  # eps of every LayerNorm in the tower (timm / SLIP: 1e-6; CLIP: 1e-5)
    patch_bias: bool = True  # a bias on the patch projection (CLIP's `conv1` has none, nor timm's with pre_norm)

    def __post_init__(self) -> None:
        _check_act("vision", self.act)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"vision width {self.width} is not divisible by heads {self.heads}")


@dataclass(kw_only=True)
class TextConfig:
    """The CLIP text transformer (causal, pooled at the EOT token)."""

    context_length: int = 77  # tokens per caption, SOT and EOT included
    vocab_size: int = 49408  # CLIP BPE vocabulary
    width: int = 512
    layers: int = 12
    heads: int = 8
    act: str = "quick_gelu"  # CLIP and SLIP's text tower; open_clip's non-quickgelu configs use "gelu"

    def __post_init__(self) -> None:
        _check_act("text", self.act)
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")


@dataclass(kw_only=True)
class HeadConfig:
    """The SimCLR projection MLP: Linear-norm-ReLU, Linear-norm-ReLU, Linear (SLIP §3.2)."""

    mlp_dim: int = 4096  # hidden width
    out_dim: int = 256  # embedding fed to NT-Xent
    # "bn" (reference; SyncBatchNorm when distributed), "ln" or "none" (docs/DESIGN.md, 'SimCLR head norm')
    norm: str = "bn"

    def __post_init__(self) -> None:
        if self.norm not in HEAD_NORMS:
            raise ValueError(f"ssl head norm {self.norm!r}; choose one of: {', '.join(HEAD_NORMS)}")


@dataclass(kw_only=True)
class DistillHeadConfig:
    """The self-distillation head (DINO, Caron et al. 2021, §3.1): a 3-layer MLP (GELU) to an L2-normalised bottleneck,
    then cosine similarity to `out_dim` learned prototypes (DINO's weight-normalised last layer with its norm fixed)."""

    mlp_dim: int = 2048  # hidden width of the MLP
    bottleneck_dim: int = 256  # width of the L2-normalised embedding before the prototypes
    out_dim: int = 65536  # prototypes: the size of the softmax the teacher and the student share

    def __post_init__(self) -> None:
        for name in ("mlp_dim", "bottleneck_dim", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"distill head {name} must be >= 1, got {getattr(self, name)}")


@dataclass(kw_only=True)
class ModelConfig:
    """One SLIP module; CLIP-only has no `ssl_head`, SimCLR-only has no `text` tower. A model trained with
    self-distillation (`loss.ssl=distill`) has a `distill_head` in place of the SimCLR `ssl_head`."""

    name: str  # registry name, e.g. "slip_vit_b16"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig | None = field(default_factory=TextConfig)  # None: no text tower (SimCLR)
    embed_dim: int = 512  # joint image-text embedding width
    ssl_head: HeadConfig | None = field(default_factory=HeadConfig)  # None: no SimCLR head (CLIP)
    # "sigmoid": SigLIP's initial temperature (10) and a learned `logit_bias` (-10); "softmax": CLIP's (1 / 0.07)
    contrastive: str = "softmax"
    distill_head: DistillHeadConfig | None = None  # the self-distillation head (docs/OBJECTIVES.md); None: none

    def __post_init__(self) -> None:
        if self.text is None and self.ssl_head is None and self.distill_head is None:
            raise ValueError("a model needs a text tower (CLIP), an ssl head (SimCLR) or both (SLIP)")
        if self.ssl_head is not None and self.distill_head is not None:
            raise ValueError(f"{self.name}: one self-supervised head, the SimCLR head or the distillation head")
        if self.contrastive not in CONTRASTIVES:
            raise ValueError(f"contrastive {self.contrastive!r}; choose one of: {', '.join(CONTRASTIVES)}")
        if self.contrastive == "sigmoid" and self.text is None:
            raise ValueError(f"{self.name}: the sigmoid image-text loss needs a text tower")

    @property
    def image_views(self) -> tuple[str, ...]:
        """The augmented views its objectives read: the CLIP view "image" (with a caption) when it has a text
        tower, the two SimCLR views "view1", "view2" when it has an ssl head, and with a distillation head those two
        as its global crops plus the "local" crops. The data pipeline renders these and no others, so a baseline pays
        only for what it trains (docs/DESIGN.md, 'Work follows the objective')."""
        clip = ("image",) if self.text is not None else ()
        if self.distill_head is not None:
            return (*clip, "view1", "view2", "local")
        return clip + (("view1", "view2") if self.ssl_head is not None else ())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        vision = VisionConfig(**d.pop("vision"))
        text = d.pop("text", None)
        head = d.pop("ssl_head", None)
        distill = d.pop("distill_head", None)
        return cls(
            vision=vision,
            text=TextConfig(**text) if text is not None else None,
            ssl_head=HeadConfig(**head) if head is not None else None,
            distill_head=DistillHeadConfig(**distill) if distill is not None else None,
            **d,
        )
