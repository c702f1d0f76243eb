"""Augmentations for training a classifier on a labelled set: the SGD linear probe's crop and flip
(``ProbeTransform``, the reference's main_linear.py) and BEiT's finetuning transform (``FinetuneTransform``).
The pre-training views are in ``views.py``; these share its crop sampling (``params.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from openslip.data.augment.color import normalize
from openslip.data.augment.params import IMAGENET_MEAN, IMAGENET_STD, ViewRecipe, sample_view_params
from openslip.data.augment.randaugment import RandAugment, RandomErasing, parse_randaug
from openslip.data.augment.views import apply_view, resize_crop_uint8, to_rgb_uint8


class ProbeTransform:
    """RandomResizedCrop (torchvision semantics, rejection sampling) + horizontal flip, normalised: the
    augmentation of the reference's SGD linear probe and of finetuning (without the colour ops)."""

    def __init__(self, image_size: int, scale: tuple[float, float] = (0.08, 1.0), flip_p: float = 0.5) -> None:
        self.image_size = image_size
        self.recipe = ViewRecipe(scale=scale, flip_p=flip_p)

    def __call__(self, image: Any) -> torch.Tensor:
        arr = np.asarray(image)
        params = sample_view_params(arr.shape[0], arr.shape[1], self.recipe)
        return apply_view(arr, params, self.image_size)


class FinetuneTransform:
    """BEiT's training transform: RandomResizedCrop (bicubic) + flip, RandAugment on the uint8 crop, normalise, then
    random erasing. Randomness from ``generator`` or, when None, torch's global RNG (see ``SeededSamples``)."""

    def __init__(
        self,
        image_size: int,
        *,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        randaug: RandAugment | None = None,
        reprob: float = 0.0,
    ) -> None:
        self.image_size = image_size
        self.recipe = ViewRecipe(scale=crop_scale, flip_p=0.5 if flip else 0.0)
        self.randaug = randaug
        self.erase = RandomErasing(reprob) if reprob > 0 else None
        self.mean, self.std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @classmethod
    def from_config(cls, image_size: int, cfg: Any) -> FinetuneTransform:
        """From a ``FinetuneConfig`` (its crop_scale, flip, randaug and reprob)."""
        return cls(
            image_size, crop_scale=cfg.crop_scale, flip=cfg.flip, randaug=parse_randaug(cfg.randaug), reprob=cfg.reprob
        )

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        arr = np.require(to_rgb_uint8(image), requirements="W")  # PIL arrays are read-only; torch wants writable
        params = sample_view_params(arr.shape[0], arr.shape[1], self.recipe, generator)
        src = torch.from_numpy(arr).permute(2, 0, 1)[None]
        # BEiT's RandomResizedCropAndInterpolation with --train_interpolation bicubic (its default)
        y = resize_crop_uint8(src, params.crop, (self.image_size, self.image_size), "bicubic")[0]
        if params.flip:
            y = y.flip(-1)
        if self.randaug is not None:
            y = self.randaug(y, generator)
        x = normalize(y.float().div_(255), self.mean, self.std)
        return self.erase(x, generator) if self.erase is not None else x
