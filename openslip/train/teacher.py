"""The EMA teacher of `loss.ssl=distill` (DINO, Caron et al. 2021, §3.1; SILC; SigLIP 2): a copy of the student's
image tower and distillation head that follows it by an exponential moving average and gets no gradient.

Its state is training state, not the model: the teacher weights and the centre go into each checkpoint's train state
and come back on resume bit for bit; the model's own weights (and every export or evaluation of them) are the
student's, as in SILC, whose evaluations use the student. The functions it applies are in `openslip.distill`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from openslip.distill import center_update, ema_update_, teacher_momentum, teacher_probs
from openslip.models.config import ModelConfig
from openslip.models.slip import SLIP
from openslip.train.config import LossConfig


class EMATeacher(nn.Module):
    """`visual` and `distill_head` of the student, updated by `update` after each optimizer step; `center` [K] is the
    EMA of the teacher's outputs over the global batch (DINO's centring, which keeps one prototype from winning)."""

    def __init__(self, student: SLIP, cfg: LossConfig, total_steps: int) -> None:
        super().__init__()
        if not student.has_distill_head:
            raise ValueError(f"{student.cfg.name} has no distillation head to teach")
        self.visual = copy.deepcopy(student.visual)
        self.visual.patch_dropout = 0.0  # the teacher sees every patch (FLIP's dropout is a student-side saving)
        self.distill_head = copy.deepcopy(student.distill_head)
        self.requires_grad_(False)
        head = student.cfg.distill_head
        param = next(student.parameters())
        self.register_buffer("center", torch.zeros(head.out_dim, dtype=param.dtype, device=param.device))
        self.base_momentum = cfg.teacher_momentum
        self.center_momentum = cfg.center_momentum
        self.temperature = cfg.teacher_temperature
        self.total_steps = total_steps
        self._logits: torch.Tensor | None = None  # this step's outputs, for the centre update after the step

    def _pairs(self, student: SLIP) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher parameters, the student's in the same order); the image tower and head hold no buffers."""
        mine = [*self.visual.parameters(), *self.distill_head.parameters()]
        theirs = [*student.visual.parameters(), *student.distill_head.parameters()]
        # a sharded student (train.parallel=fsdp): its full weights, gathered (every rank updates at the same step)
        return mine, [p.full_tensor() if type(p).__name__ == "DTensor" else p for p in theirs]

    @torch.no_grad()
    def targets(
        self, inputs: dict[str, torch.Tensor], autocast: Callable[[], AbstractContextManager] = nullcontext
    ) -> dict[str, torch.Tensor]:
        """The teacher's centred, sharpened distributions of the two global views: {"teacher_probs": [B, 2, K]}."""
        views = torch.cat([inputs["view1"], inputs["view2"]])  # [2B, 3, S, S]
        with autocast():
            logits = self.distill_head(self.visual(views))[1]  # [2B, K]
        batch = inputs["view1"].shape[0]
        self._logits = logits.to(self.center.dtype).unflatten(0, (2, batch)).transpose(0, 1)  # [B, 2, K]
        return {"teacher_probs": teacher_probs(self._logits, self.center, self.temperature)}

    @torch.no_grad()
    def update(self, student: SLIP, step: int) -> float:
        """After the optimizer step that ends step `step` (0-based): EMA of the student's weights at the momentum of
        that step, and the centre moved toward this step's teacher outputs; returns the momentum used."""
        momentum = teacher_momentum(step, self.total_steps, self.base_momentum)
        mine, theirs = self._pairs(student)
        ema_update_(mine, theirs, momentum)
        if self._logits is not None:
            self.center.copy_(center_update(self.center, self._logits, self.center_momentum))
            self._logits = None
        return momentum


# The collapse lines (docs/OBJECTIVES.md, 'Collapse'). DINO names two collapses (§5.3): every teacher distribution
# uniform (its entropy reaches log K), or one prototype dominating every sample (the entropy of the batch's mean
# distribution falls to 0); dimensional collapse shows as the student's embeddings spanning few directions (RankMe).
UNIFORM_FRACTION = 0.95  # teacher entropy above this fraction of log K: near uniform
ONE_PROTOTYPE_NATS = 0.5  # mean distribution's entropy below this: about one or two prototypes for the whole batch
_COLLAPSING = "the self-distillation branch is collapsing"
MIN_RANK = 2.0  # RankMe of the student's embeddings below this: the batch lies near one direction


def collapse_warnings(metrics: dict[str, float], model_cfg: ModelConfig, batch_size: int) -> list[tuple[str, str]]:
    """(kind, line) for each sign of collapse in a step's logged metrics (none for a model without distillation)."""
    head = model_cfg.distill_head
    if head is None or "teacher_entropy" not in metrics:
        return []
    out = []
    log_k = math.log(head.out_dim)
    entropy, spread = metrics["teacher_entropy"], metrics.get("teacher_batch_entropy", log_k)
    if entropy >= UNIFORM_FRACTION * log_k:
        line = f"the teacher's outputs are near uniform (entropy {entropy:.2f} of at most log K = {log_k:.2f} nats)"
        out.append(("uniform", f"warning: {line}: {_COLLAPSING}; lower loss.teacher_temperature (sharper targets)"))
    if spread <= ONE_PROTOTYPE_NATS:
        line = f"one prototype takes the whole batch (entropy of the mean teacher output {spread:.2f} nats)"
        fix = "raise loss.center_momentum toward 1 or lower the learning rate"
        out.append(("one_prototype", f"warning: {line}: {_COLLAPSING}; {fix}"))
    rank = metrics.get("ssl_rank")
    if rank is not None and rank == rank and rank < MIN_RANK and batch_size > MIN_RANK:  # rank == rank: not NaN
        out.append(
            (
                "rank",
                f"warning: the student's embeddings span about {rank:.1f} direction(s) (RankMe): dimensional collapse "
                "of the self-distillation branch",
            )
        )
    return out
