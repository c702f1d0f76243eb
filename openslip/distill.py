"""Self-distillation from an EMA teacher (`loss.ssl=distill`): DINO's objective (Caron et al., ICCV 2021), the SSL
branch SILC (Naeem et al. 2023) and SigLIP 2 (Tschannen et al. 2025) train beside the image-text loss.

The student sees every crop of a sample (the two global views and N local crops); the teacher, an exponential moving
average of the student's image tower and head, sees the two global views only. Each teacher distribution is centred
(minus an EMA of the teacher's outputs over the global batch) and sharpened (a low temperature); the loss is the
cross-entropy from each teacher global view to every student crop of another view (DINO §3.1, Algorithm 1):

    P_t(g) = softmax((t_g - c) / tau_t)
    loss = mean over the pairs (g, v != g) of  -sum_k P_t(g)_k log softmax(s_v / tau_s)_k

Everything here works per sample, so the loss averaged over the local rows and then over ranks (DDP) is exactly the
one-process loss of the whole batch; the centre is the only thing that reads the batch, and it is all-reduced, so
every rank holds the same centre. These are the functions; the teacher module and its state live in
`openslip.train.teacher`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from openslip import distributed

__all__ = ["center_update", "distill_loss", "ema_update_", "teacher_momentum", "teacher_probs"]


def teacher_momentum(step: int, total_steps: int, base: float) -> float:
    """The EMA momentum at `step`: from `base` (0.996 in DINO) to 1 on a half cosine over the run (DINO §3.1)."""
    if total_steps <= 0:
        return base
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update_(teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, in place, tensor by tensor (one fused kernel per
    list). Deterministic: the same inputs give the same bits on every rank, so the teachers never drift apart."""
    torch._foreach_mul_(teacher, momentum)
    torch._foreach_add_(teacher, [s.to(t.dtype) for t, s in zip(teacher, student, strict=True)], alpha=1.0 - momentum)


def teacher_probs(teacher_logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """Centred, sharpened teacher distributions: softmax((logits - center) / temperature) over the last dim."""
    with torch.autocast(device_type=teacher_logits.device.type, enabled=False):
        dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
        return F.softmax((teacher_logits.to(dtype) - center.to(dtype)) / temperature, dim=-1)


@torch.no_grad()
def center_update(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """The new centre: momentum * center + (1 - momentum) * mean of the teacher logits [B, V, K] over the global batch
    and its views. Every rank holds B samples, so the all-reduced mean of the local means is the global mean, and
    all-reduce gives every rank the same value."""
    flat = teacher_logits.reshape(-1, teacher_logits.shape[-1]).to(center.dtype)  # [B*V, K]
    return center * momentum + distributed.all_reduce_mean(flat.mean(dim=0)) * (1.0 - momentum)


def distill_loss(
    global_logits: torch.Tensor,
    local_logits: torch.Tensor | None,
    probs: torch.Tensor,
    *,
    temperature: float = 0.1,
) -> dict[str, torch.Tensor]:
    """DINO's cross-entropy from the teacher's global views to the student's other crops.

    Args:
        global_logits: [B, 2, K] the student's outputs for the two global views.
        local_logits: [B, N, K] the student's outputs for the N local crops (None: no local crops).
        probs: [B, 2, K] the teacher's centred, sharpened distributions for the two global views (no gradient).
        temperature: the student's softmax temperature (0.1 in DINO).

    Returns:
        ``ssl_loss``: the mean over the 2 (2 + N) - 2 pairs and the local rows; ``teacher_entropy``: the mean entropy
        of a teacher distribution, and ``teacher_batch_entropy``: the entropy of their mean, both in nats (detached;
        docs/OBJECTIVES.md reads them: near log K the teacher is uniform, near 0 the batch sits on one prototype).
    """
    if global_logits.ndim != 3 or global_logits.shape[1] != 2 or probs.shape != global_logits.shape:
        raise ValueError(
            f"global_logits and teacher probabilities must both be [batch, 2, K], got {tuple(global_logits.shape)} "
            f"and {tuple(probs.shape)}"
        )
    with torch.autocast(device_type=global_logits.device.type, enabled=False):
        dtype = torch.promote_types(global_logits.dtype, torch.float32)
        crops = global_logits if local_logits is None else torch.cat([global_logits, local_logits], dim=1)
        log_student = F.log_softmax(crops.to(dtype) / temperature, dim=-1)  # [B, V, K], V = 2 + N
        targets = probs.to(dtype).detach()
        # cross[b, g, v] = -sum_k P_t(g)_k log P_s(v)_k for every teacher view g and student crop v
        cross = -torch.einsum("bgk,bvk->bgv", targets, log_student)  # [B, 2, V]
        # every (g, v) but a global view against itself, in row-major order: slices, not a boolean mask, whose
        # indexing would read the mask back to the host (a wait for the GPU at every step)
        pairs = torch.cat([cross[:, 0, 1:], cross[:, 1, :1], cross[:, 1, 2:]], dim=1)  # [B, 2V - 2]
        loss = pairs.sum(dim=1).mean() / pairs.shape[1]
        with torch.no_grad():
            entropy = -(targets * targets.clamp_min(1e-30).log()).sum(-1).mean()
            mean = targets.mean(dim=(0, 1))
            batch_entropy = -(mean * mean.clamp_min(1e-30).log()).sum()
    return {"ssl_loss": loss, "teacher_entropy": entropy, "teacher_batch_entropy": batch_entropy}
