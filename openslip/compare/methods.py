"""The pre-training methods `openslip compare` sets side by side (SLIP §4): SLIP, its two baselines, and CLIP
trained on SimCLR-augmented views; on request also SigLIP's sigmoid image-text loss in place of CLIP's softmax, alone
or with SimCLR, and self-distillation from an EMA teacher in place of SimCLR (docs/OBJECTIVES.md).

A method is the SLIP model of the experiment less a part, its loss weights, and (with `--hparams paper`) the
paper's learning rate and weight decay for its objective (the values the recipes use,
`openslip.train.recipes.OBJECTIVES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openslip.registry import Registry
from openslip.train.recipes import OBJECTIVES


@dataclass(frozen=True)
class Method:
    name: str
    title: str  # the row label of the results table
    objective: str  # a key of openslip.train.recipes.OBJECTIVES: lr, wd and loss weights of the paper
    drop: str | None  # the model part it trains without: "ssl_head" (CLIP), "text" (SimCLR), None (SLIP)
    overrides: dict[str, Any] = field(default_factory=dict)  # further config values, nested like the config

    def config_values(self, *, paper_optim: bool = True) -> dict[str, Any]:
        """The config values this method sets (model aside): loss weights, its own overrides, and the paper's lr and
        wd for its objective when `paper_optim` (`openslip compare --hparams paper`)."""
        _, lr, wd, ssl_scale, clip_scale = OBJECTIVES[self.objective]
        values: dict[str, Any] = {"loss": {"ssl_scale": ssl_scale, "clip_scale": clip_scale}}
        if paper_optim:
            values["optim"] = {"lr": lr, "wd": wd}
        for section, items in self.overrides.items():
            values.setdefault(section, {}).update(items)
        return values


METHODS: Registry[Method] = Registry("method")
for _m in (
    Method("clip", "CLIP", "clip", drop="ssl_head"),
    # The CLIP view drawn with the SimCLR recipe: the augmentation ablation of SLIP, which later work found
    # closes much of SLIP's gain over CLIP (Fini et al. 2023; Li et al. 2024).
    Method("clip_aug", "CLIP + SimCLR aug.", "clip", drop="ssl_head", overrides={"data": {"image_view": "simclr"}}),
    Method("simclr", "SimCLR", "simclr", drop="text"),
    Method("slip", "SLIP", "slip", drop=None),
    # SigLIP's pairwise sigmoid loss (Zhai et al., ICCV 2023) in place of the softmax; not in the default set, which
    # is the SLIP paper's comparison. The paper lr / wd stay those of the objective it replaces.
    Method("siglip", "SigLIP", "clip", drop="ssl_head", overrides={"loss": {"contrastive": "sigmoid"}}),
    Method("slip_sigmoid", "SLIP (sigmoid)", "slip", drop=None, overrides={"loss": {"contrastive": "sigmoid"}}),
    # Self-distillation from an EMA teacher in place of SimCLR (SILC, Naeem et al. 2023; SigLIP 2): the SLIP model,
    # whose SimCLR head the distillation head replaces, and the lr / wd of SLIP, the objective it changes one term of.
    Method("clip_distill", "CLIP + self-distillation", "slip", drop=None, overrides={"loss": {"ssl": "distill"}}),
    Method(
        "siglip_distill",
        "SigLIP + self-distillation",
        "slip",
        drop=None,
        overrides={"loss": {"contrastive": "sigmoid", "ssl": "distill"}},
    ),
):
    METHODS.register(_m.name, _m)

DEFAULT_METHODS = ("clip", "clip_aug", "simclr", "slip")
# The random-initialisation row: the floor every method must clear (on small sets a random ViT's probe can
# beat a briefly trained one).
RANDOM_ROW = "random"
