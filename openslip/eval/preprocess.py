"""Each evaluation protocol's test-image preprocessing, as the code behind the paper's numbers defines it.

- zero-shot (the reference's eval_zeroshot.py): Resize(224) -> CenterCrop(224), bilinear; retrieval and
  `openslip embed` use it too, since they read the same CLIP embedding;
- linear probe, kNN and few-shot (the reference's main_linear.py, from MoCo v3): Resize(256) -> CenterCrop(224),
  bilinear;
- finetuning (BEiT, crop_pct 0.875): Resize(256, bicubic) -> CenterCrop(224).

For another image size S the resize keeps the ratio: floor(S / crop_fraction). ``crop_fraction`` overrides the
protocol's (``--crop-fraction``, ``eval.crop_fraction``): 1.0 resizes to S, 0.875 to S / 0.875.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openslip.data.augment.params import AugmentConfig
from openslip.data.augment.views import EvalTransform
from openslip.errors import ConfigError


@dataclass(frozen=True)
class ModelInputs:
    """What a loaded model records about its inputs: weights converted from CLIP keep CLIP's mean / std and its
    bicubic resize (openai/CLIP's `_transform`, as open_clip preprocesses them); openslip's own models record none."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str | None = None  # None: each protocol's own


@dataclass(frozen=True)
class Preprocess:
    crop_fraction: float  # centre crop / resized shorter side
    interpolation: str  # "bilinear" | "bicubic"


PROTOCOL_PREPROCESS: dict[str, Preprocess] = {
    "zeroshot": Preprocess(1.0, "bilinear"),
    "retrieval": Preprocess(1.0, "bilinear"),
    "embed": Preprocess(1.0, "bilinear"),
    "linear": Preprocess(0.875, "bilinear"),
    "knn": Preprocess(0.875, "bilinear"),
    "fewshot": Preprocess(0.875, "bilinear"),  # frozen features, as the probes take them
    "finetune": Preprocess(0.875, "bicubic"),
}


def check_crop_fraction(value: float | None, what: str = "--crop-fraction") -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise ConfigError(
            f"{what} must be in (0, 1] (1.0: resize to the image size, 0.875: to size / 0.875), got {value}"
        )
    return value


def model_inputs(model: Any) -> ModelInputs | None:
    """The inputs a loaded model records (``ModelInputs``); None: openslip's (ImageNet statistics)."""
    recorded = getattr(model, "preprocess", None) or {}
    if "mean" in recorded and "std" in recorded:
        return ModelInputs(tuple(recorded["mean"]), tuple(recorded["std"]), recorded.get("interpolation"))  # type: ignore[arg-type]
    return None


def eval_transform(
    protocol: str, image_size: int, crop_fraction: float | None = None, inputs: ModelInputs | None = None
) -> EvalTransform:
    """The test-image transform of ``protocol`` (a key of PROTOCOL_PREPROCESS) at ``image_size``, normalised and
    resized as ``inputs`` records (default: the ImageNet statistics openslip trains with, the protocol's resize)."""
    if protocol not in PROTOCOL_PREPROCESS:
        raise ConfigError(f"unknown evaluation protocol {protocol!r}; choose one of: {', '.join(PROTOCOL_PREPROCESS)}")
    pre = PROTOCOL_PREPROCESS[protocol]
    crop = check_crop_fraction(crop_fraction)
    config = AugmentConfig(image_size=image_size)
    interpolation = pre.interpolation
    if inputs is not None:
        config = AugmentConfig(image_size=image_size, mean=tuple(inputs.mean), std=tuple(inputs.std))
        interpolation = inputs.interpolation or interpolation
    return EvalTransform(
        config=config, crop_fraction=pre.crop_fraction if crop is None else crop, interpolation=interpolation
    )
