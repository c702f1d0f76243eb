"""The SLIP objective: CLIP image-text contrastive loss + ``ssl_scale`` x SimCLR NT-Xent (SLIP, arXiv 2112.12750, §3).

Model -> dict -> loss -> dict: :class:`SLIPLoss` reads the model's output dict (``image_embed``,
``text_embed``, ``logit_scale``, ``view1_embed``, ``view2_embed``) and returns a dict whose ``loss`` is
the only entry to backpropagate; the other entries are detached metrics. The image-text term is CLIP's softmax
or, with ``contrastive="sigmoid"``, SigLIP's pairwise sigmoid, which also reads ``logit_bias`` (docs/OBJECTIVES.md).

Both losses are contrastive over the **global** batch. Each rank scores its B local samples (the rows)
against all W*B samples of the job (the columns) and averages over its local rows, so the
one-process loss on the concatenated batch equals the mean of the per-rank losses. Features are
gathered with :func:`openslip.distributed.gather_with_grad`, whose backward sums gradients over ranks;
with DDP averaging parameter gradients over ranks, every parameter then receives exactly the gradient
one process would compute on the whole batch (the convention is derived in ``openslip.distributed``).
The 2021 reference gathered the CLIP features without gradient, which makes its objective depend on
the number of GPUs (docs/DESIGN.md, 'Gathering with gradient'); ``gather="reference"`` reproduces it for comparisons.

The math runs in float32 (float64 inputs stay float64) with autocast disabled: bf16 logits and
log-softmax over a few thousand candidates lose too much precision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from openslip import distributed
from openslip.distill import distill_loss

__all__ = ["CONTRASTIVES", "GATHER_MODES", "SSL_BRANCHES", "SLIPLoss", "clip_loss", "sigmoid_loss", "simclr_loss"]

Gather = Literal["grad", "reference"]
GATHER_MODES: tuple[str, ...] = ("grad", "reference")
# The image-text term: CLIP's softmax (InfoNCE) or SigLIP's pairwise sigmoid (Zhai et al., ICCV 2023), which reads a
# learned bias as well (docs/OBJECTIVES.md); a model's config names the one it is trained with
CONTRASTIVES: tuple[str, ...] = ("softmax", "sigmoid")
# The self-supervised term on the image tower: SLIP's SimCLR, self-distillation from an EMA teacher (DINO's loss, as
# SILC and SigLIP 2 add it; openslip.distill), or none (an image-text loss alone)
SSL_BRANCHES: tuple[str, ...] = ("simclr", "distill", "none")

# Added to a sample's similarity with itself in SimCLR's same-view logits so that it is never a
# candidate; finite (as the reference's 1e9) so that no inf - inf can appear.
_SELF_MASK = 1e9

CLIP_KEYS = ("image_embed", "text_embed", "logit_scale")
SIGMOID_KEYS = (*CLIP_KEYS, "logit_bias")
SSL_KEYS = ("view1_embed", "view2_embed")
DISTILL_KEYS = ("global_logits", "teacher_probs")  # and local_logits when the data has local crops


def _check_gather(gather: str) -> None:
    if gather not in GATHER_MODES:
        raise ValueError(f"gather must be one of {GATHER_MODES}, got {gather!r}")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64 (half / bf16 inputs are promoted)."""
    dtype = torch.float32
    for t in tensors:
        if t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{names} must both be [batch, dim] with the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _local_labels(batch: int, device: torch.device) -> torch.Tensor:
    """Column index of each local sample in the rank-major global batch: rank * B + arange(B)."""
    return distributed.rank() * batch + torch.arange(batch, device=device)


def _label_mask(labels: torch.Tensor, columns: int, on: float, off: float, dtype: torch.dtype) -> torch.Tensor:
    """[B, columns]: ``on`` at each row's label column, ``off`` elsewhere. F.one_hot would read the labels' range
    back to the host to check it, a wait for the GPU at every step; a scatter of known-good labels does not."""
    mask = torch.full((labels.shape[0], columns), off, dtype=dtype, device=labels.device)
    return mask.scatter_(1, labels[:, None], on)


def _percent_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return 100.0 * (logits.argmax(dim=-1) == labels).to(logits.dtype).mean()


def _unit_pair(image_embed: torch.Tensor, text_embed: torch.Tensor, logit_scale: Any) -> tuple[torch.Tensor, ...]:
    """Both embeddings L2-normalised in the loss's compute dtype, and the scale in that dtype (call with autocast
    off): the start of every image-text loss."""
    dtype = _compute_dtype(image_embed, text_embed)
    scale = torch.as_tensor(logit_scale, device=image_embed.device).to(dtype)
    return F.normalize(image_embed.to(dtype), dim=-1), F.normalize(text_embed.to(dtype), dim=-1), scale


def clip_loss(
    image_embed: torch.Tensor,
    text_embed: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    gather: Gather = "grad",
) -> dict[str, torch.Tensor]:
    """Symmetric image-text InfoNCE over the global batch (CLIP; SLIP §3.1).

    Args:
        image_embed: [B, D] unnormalised image embeddings of this rank's samples.
        text_embed: [B, D] unnormalised text embeddings of the same samples (pair i is positive).
        logit_scale: the multiplier of the cosine similarities, already exponentiated (the model output).
        gather: ``"grad"`` gathers other ranks' features with gradient (one-process-exact);
            ``"reference"`` gathers them without gradient, as the 2021 SLIP code did
            (docs/DESIGN.md, 'Gathering with gradient').

    Returns:
        ``clip_loss``: (CE(image->text) + CE(text->image)) / 2, averaged over this rank's B rows, each row
        scored against all W*B candidates of the job; ``clip_acc``: image->text top-1 accuracy of the local
        rows in percent (detached), as the reference reports it.
    """
    _check_gather(gather)
    _check_pair(image_embed, text_embed, "image_embed and text_embed")
    with torch.autocast(device_type=image_embed.device.type, enabled=False):
        img, txt, scale = _unit_pair(image_embed, text_embed, logit_scale)  # [B, D], [B, D], scalar
        gather_fn = distributed.gather_with_grad if gather == "grad" else distributed.gather_no_grad
        img_all, txt_all = gather_fn(img), gather_fn(txt)  # [W*B, D], rank-major
        labels = _local_labels(img.shape[0], img.device)
        # Local rows against every column of the job; the local rows keep their gradient in both modes,
        # the columns carry gradient back to their owner rank only with gather="grad".
        logits_i2t = scale * img @ txt_all.t()  # [B, W*B]
        logits_t2i = scale * txt @ img_all.t()  # [B, W*B]
        loss = (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2
        acc = _percent_correct(logits_i2t, labels)
    return {"clip_loss": loss, "clip_acc": acc}


def sigmoid_loss(
    image_embed: torch.Tensor,
    text_embed: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
) -> dict[str, torch.Tensor]:
    """SigLIP's pairwise sigmoid image-text loss over the global batch (Zhai et al., ICCV 2023, §3.1).

    With L2-normalised embeddings of the N = W*B pairs of the job, ``logits = t * img @ txt.T + b`` [N, N] and
    ``z = +1`` on the diagonal, -1 elsewhere: ``loss = -(1/N) * sum_ij log sigmoid(z_ij * logits_ij)`` (the paper
    normalises by the batch size N, not by the N^2 pairs). Each rank scores its B image rows against the N gathered
    texts and divides by B, so the mean over ranks is the loss above; the texts are gathered with gradient, which
    makes value and gradients equal to one process holding the whole batch (module docstring). Every pair (i, j) is
    a row of exactly one rank, so no image needs gathering.

    Args:
        image_embed: [B, D] unnormalised image embeddings of this rank's samples.
        text_embed: [B, D] unnormalised text embeddings of the same samples (pair i is positive).
        logit_scale: t, already exponentiated (the model output).
        logit_bias: b, the learned bias (the model output).

    Returns:
        ``clip_loss``: the loss above (the image-text term keeps CLIP's key, so logs, plots and compare read either
        objective); ``clip_acc``: image->text top-1 accuracy of the local rows in percent (detached).
    """
    _check_pair(image_embed, text_embed, "image_embed and text_embed")
    with torch.autocast(device_type=image_embed.device.type, enabled=False):
        img, txt, scale = _unit_pair(image_embed, text_embed, logit_scale)  # [B, D], [B, D], scalar
        dtype = img.dtype
        bias = torch.as_tensor(logit_bias, device=img.device).to(dtype)
        txt_all = distributed.gather_with_grad(txt)  # [N, D], rank-major
        labels = _local_labels(img.shape[0], img.device)
        logits = scale * img @ txt_all.t() + bias  # [B, N]
        signs = _label_mask(labels, txt_all.shape[0], 1.0, -1.0, dtype)  # [B, N]: +1 at the positive, -1 elsewhere
        loss = -F.logsigmoid(signs * logits).sum() / img.shape[0]
        acc = _percent_correct(logits, labels)
    return {"clip_loss": loss, "clip_acc": acc}


def simclr_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    gather: Gather = "grad",
) -> dict[str, torch.Tensor]:
    """NT-Xent between two views with 2N-1 candidates per anchor over the global batch (SimCLR; SLIP §3.2).

    For a local anchor ``i`` of view 1 the candidates are all N = W*B view-2 embeddings (the positive is
    sample i's) and the N - 1 other view-1 embeddings (itself is masked out), and symmetrically for view 2;
    the loss is the mean of the two cross-entropies, as the reference ``SIMCLRLoss``.

    Args:
        z1, z2: [B, D] unnormalised head outputs of the two views of this rank's samples.
        temperature: the softmax temperature (0.1 in SLIP).
        gather: ``"grad"`` or ``"reference"``; identical here, because the reference already gathered the
            SimCLR features with gradient (only its CLIP loss did not). Accepted so that one setting
            selects the reference behaviour for the whole SLIP loss.

    Returns:
        ``ssl_loss`` and ``ssl_acc`` (top-1 of the view-1 anchors in percent, detached).
    """
    _check_gather(gather)
    _check_pair(z1, z2, "view1_embed and view2_embed")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = _compute_dtype(z1, z2)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        q1 = F.normalize(z1.to(dtype), dim=-1)  # [B, D]
        q2 = F.normalize(z2.to(dtype), dim=-1)  # [B, D]
        k1, k2 = distributed.gather_with_grad(q1), distributed.gather_with_grad(q2)  # [N, D], N = W*B
        labels = _local_labels(q1.shape[0], q1.device)
        self_mask = _label_mask(labels, k1.shape[0], _SELF_MASK, 0.0, dtype)  # [B, N]
        logits_12 = q1 @ k2.t() / temperature  # positives on the label column
        logits_11 = q1 @ k1.t() / temperature - self_mask  # same view: drop the anchor itself
        logits_21 = q2 @ k1.t() / temperature
        logits_22 = q2 @ k2.t() / temperature - self_mask
        logits_1 = torch.cat([logits_12, logits_11], dim=1)  # [B, 2N]; label < N points into the first block
        logits_2 = torch.cat([logits_21, logits_22], dim=1)
        loss = (F.cross_entropy(logits_1, labels) + F.cross_entropy(logits_2, labels)) / 2
        acc = _percent_correct(logits_1, labels)
    return {"ssl_loss": loss, "ssl_acc": acc}


def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe (Garrido et al., ICML 2023): exp of the entropy of the normalised singular values of a batch of
    embeddings [B, D]; from 1 (every embedding on one line: collapse) up to min(B, D). Detached, float32.

    NaN when `z` holds inf / NaN (a diverged step): the SVD would raise on it before the training loop's finite-loss
    check could stop the run with its one line. The rank does not depend on the scale of `z`, so it is divided by its
    largest entry first: huge but finite features cannot overflow inside the SVD either."""
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        z = z.detach().float()
        finite = torch.isfinite(z)
        # no host sync: non-finite entries are zeroed for the SVD and the result is replaced by NaN afterwards
        z = torch.where(finite, z, torch.zeros((), dtype=z.dtype, device=z.device))
        z = z / z.abs().amax().clamp_min(torch.finfo(z.dtype).tiny)
        try:
            s = torch.linalg.svdvals(z)
        except torch.linalg.LinAlgError:  # no convergence on a degenerate batch: a metric, never a crash
            return torch.tensor(float("nan"), device=z.device)
        p = s / s.sum().clamp_min(eps) + eps
        rank = torch.exp(-(p * p.log()).sum())
        return torch.where(finite.all(), rank, torch.full_like(rank, float("nan")))


class SLIPLoss(nn.Module):
    """``loss = clip_scale * clip_loss + ssl_scale * ssl_loss`` on a model output dict (SLIP §3.3).

    A term is computed when its weight is > 0, from its inputs in the model output (``image_embed``,
    ``text_embed``, ``logit_scale`` for CLIP; ``view1_embed``, ``view2_embed`` for SimCLR), so CLIP-only
    (``ssl_scale=0``) and SimCLR-only (``clip_scale=0``) runs are configurations of the same module. A weighted
    term whose inputs are missing is an error, never a silently smaller objective. The returned dict holds
    ``loss`` (the only tensor with gradient) and the detached
    ``clip_loss``, ``clip_acc``, ``ssl_loss``, ``ssl_acc`` of the terms that were computed.
    """

    def __init__(
        self,
        ssl_scale: float = 1.0,
        ssl_temperature: float = 0.1,
        *,
        clip_scale: float = 1.0,
        gather: Gather = "grad",
        contrastive: str = "softmax",
        ssl: str = "simclr",
        distill_temperature: float = 0.1,
        track_rank: bool = False,
    ) -> None:
        super().__init__()
        if ssl_scale < 0 or clip_scale < 0:
            raise ValueError(f"loss weights must be >= 0, got clip_scale={clip_scale}, ssl_scale={ssl_scale}")
        if not ssl_temperature > 0:
            raise ValueError(f"ssl_temperature must be > 0, got {ssl_temperature}")
        _check_gather(gather)
        if contrastive not in CONTRASTIVES:
            raise ValueError(f"contrastive must be one of {CONTRASTIVES}, got {contrastive!r}")
        if contrastive == "sigmoid" and gather != "grad":
            # gather="reference" reproduces the 2021 SLIP code's CLIP loss; that code had no sigmoid loss
            raise ValueError("the sigmoid loss gathers with gradient only (gather='reference' is the 2021 CLIP loss)")
        if ssl not in SSL_BRANCHES:
            raise ValueError(f"ssl must be one of {SSL_BRANCHES}, got {ssl!r}")
        if not distill_temperature > 0:
            raise ValueError(f"distill_temperature must be > 0, got {distill_temperature}")
        self.contrastive = contrastive
        self.ssl = ssl
        self.distill_temperature = float(distill_temperature)
        self.ssl_scale = float(ssl_scale) if ssl != "none" else 0.0
        self.ssl_temperature = float(ssl_temperature)
        self.clip_scale = float(clip_scale)
        self.gather = gather
        # also report ``ssl_rank``, the effective rank of this rank's view-1 embeddings (RankMe): a SimCLR branch
        # that collapses shows it as a falling rank long before the loss says so
        self.track_rank = track_rank

    @classmethod
    def for_model(cls, model: Any, **kwargs: Any) -> SLIPLoss:
        """The loss of the objectives a model has: CLIP when it has a text tower (softmax or sigmoid, as the model
        was made for), SimCLR when it has the head (weights 1, or as given)."""
        cfg = getattr(model, "cfg", model)
        kwargs.setdefault("contrastive", cfg.contrastive)
        kwargs.setdefault("clip_scale", 1.0 if cfg.text is not None else 0.0)
        kwargs.setdefault("ssl", "distill" if cfg.distill_head is not None else "simclr")
        kwargs.setdefault("ssl_scale", 1.0 if cfg.ssl_head is not None or cfg.distill_head is not None else 0.0)
        return cls(**kwargs)

    def extra_repr(self) -> str:
        return (
            f"clip_scale={self.clip_scale}, ssl_scale={self.ssl_scale}, "
            f"ssl_temperature={self.ssl_temperature}, gather={self.gather!r}, contrastive={self.contrastive!r}, "
            f"ssl={self.ssl!r}"
        )

    def forward(self, outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        terms: list[tuple[float, torch.Tensor]] = []
        metrics: dict[str, torch.Tensor] = {}

        def add(weight: float, keys: tuple[str, ...], fn: Callable[[], dict[str, torch.Tensor]]) -> None:
            if weight <= 0:
                return
            missing = [k for k in keys if outputs.get(k) is None]
            if missing:
                scale = "ssl_scale" if keys in (SSL_KEYS, DISTILL_KEYS) else "clip_scale"
                raise ValueError(
                    f"SLIPLoss: {scale}={weight} but the model output has no {', '.join(missing)}; give the model "
                    f"those inputs, or set {scale}=0 for a model without that objective"
                )
            result = fn()
            name = next(k for k in result if k.endswith("_loss"))
            terms.append((weight, result[name]))
            metrics.update({k: v.detach() for k, v in result.items()})

        if self.contrastive == "sigmoid":
            add(
                self.clip_scale,
                SIGMOID_KEYS,
                lambda: sigmoid_loss(
                    outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"], outputs["logit_bias"]
                ),
            )
        else:
            add(
                self.clip_scale,
                CLIP_KEYS,
                lambda: clip_loss(
                    outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"], gather=self.gather
                ),
            )
        if self.ssl == "distill":
            add(
                self.ssl_scale,
                DISTILL_KEYS,
                lambda: distill_loss(
                    outputs["global_logits"],
                    outputs.get("local_logits"),
                    outputs["teacher_probs"],
                    temperature=self.distill_temperature,
                ),
            )
        else:
            add(
                self.ssl_scale,
                SSL_KEYS,
                lambda: simclr_loss(
                    outputs["view1_embed"], outputs["view2_embed"], temperature=self.ssl_temperature, gather=self.gather
                ),
            )
        if self.track_rank and "ssl_loss" in metrics:
            # RankMe of the student's view-1 embeddings: SimCLR's head output, or the distillation head's bottleneck
            metrics["ssl_rank"] = effective_rank(outputs["distill_embed" if self.ssl == "distill" else "view1_embed"])
        if not terms:
            present = sorted(k for k, v in outputs.items() if v is not None)
            image_text = SIGMOID_KEYS if self.contrastive == "sigmoid" else CLIP_KEYS
            ssl_keys = DISTILL_KEYS if self.ssl == "distill" else SSL_KEYS
            raise ValueError(
                f"SLIPLoss has no term to compute: CLIP needs clip_scale > 0 and keys {list(image_text)}, the SSL term "
                f"needs ssl_scale > 0 and keys {list(ssl_keys)}; "
                f"got clip_scale={self.clip_scale}, ssl_scale={self.ssl_scale}, keys {present}"
            )
        loss = terms[0][0] * terms[0][1]
        for weight, value in terms[1:]:
            loss = loss + weight * value
        return {"loss": loss, **metrics}
