"""Process-group setup from the torchrun environment, and the collectives that are part of the loss math.

Every function here also runs in one plain process (no ``torchrun``, no process group): then the
queries answer ``rank 0 of 1`` and the collectives return their input unchanged.

Gradient convention of :func:`gather_with_grad` (see ``openslip.losses``):

* each rank computes the contrastive loss of its **local** rows against the **global** batch,
  ``L_r = mean over the B local samples``, so the one-process loss on the concatenated batch is
  ``L = (1/W) * sum_r L_r`` (the mean of the per-rank losses);
* the backward of the gather sums the incoming gradients over ranks, so the gradient that reaches
  rank ``s``'s local features is ``sum_r dL_r/dx_s = W * dL/dx_s``;
* DDP then *averages* parameter gradients over the ``W`` ranks, which divides by ``W`` again, so every
  parameter receives exactly ``dL/dtheta`` of one process holding the whole batch.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "CollectiveError",
    "DistInfo",
    "all_reduce_max",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "destroy_distributed",
    "gather_no_grad",
    "gather_with_grad",
    "init_distributed",
    "is_distributed",
    "is_main",
    "is_peer_failure",
    "rank",
    "world_size",
]


class CollectiveError(RuntimeError):
    """A collective (or joining the group) failed: a peer died, stopped answering past the timeout, or left.

    Every collective of this module raises it in place of what torch.distributed raised, whatever the type: with
    several ranks, a collective that fails is almost always a peer that is gone, and the caller turns it into one
    line instead of a traceback (``train``: "lost contact with another process")."""


# Words of the errors torch.distributed raises, outside this module's collectives (DDP's gradient all-reduce, a
# process group's own checks), when a peer died or stopped answering. Gloo says "Connection closed by peer" or
# "Connection reset by peer" for a dead rank and "Application timeout caused pair closure" for one past the
# collective timeout; NCCL errors name NCCL.
LOST_CONTACT_WORDS = ("connection", "gloo", "nccl", "timed out", "timeout", "pair closure", "peer", "socket")


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is how a collective reports a peer that is gone (meaningful with several ranks only)."""
    if isinstance(err, CollectiveError):
        return True
    dist_error = getattr(dist, "DistError", None)  # the base of DistBackendError, DistNetworkError, DistStoreError
    if dist_error is not None and isinstance(err, dist_error):
        return True
    return isinstance(err, RuntimeError) and any(w in str(err).lower() for w in LOST_CONTACT_WORDS)


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Raise a failure of the torch.distributed call inside as ``CollectiveError`` (see there)."""
    try:
        yield
    except CollectiveError:
        raise
    except Exception as err:  # RuntimeError, DistBackendError, DistNetworkError, a truncated pickle, ...
        raise CollectiveError(f"{what}: {err}") from err


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    """Global rank, 0 .. world_size - 1."""
    world_size: int
    """Number of processes in the job (1 when not launched distributed)."""
    local_rank: int
    """Rank on this node; picks the CUDA device."""
    device: torch.device
    """The device this process computes on."""
    is_main: bool
    """True on global rank 0 (the one that logs and writes checkpoints)."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from err


def is_distributed() -> bool:
    """True when a default process group is initialised (even with a single member)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Global rank of this process; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """True on global rank 0 (and in a plain single process)."""
    return rank() == 0


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the torchrun environment, or describe a single process.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT`` through the
    ``env://`` rendezvous). The backend is NCCL when CUDA is available and gloo otherwise, unless
    ``backend`` names one. On CUDA the current device is set to ``LOCAL_RANK`` before joining. Without
    ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and single-process info is returned.
    Calling it again once the group exists returns the same info. ``timeout_s`` bounds how long a
    collective waits for a rank that does not answer (``train.collective_timeout_s`` in a run).
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    if is_distributed():
        device = _default_device(local_rank)
        return DistInfo(rank(), world_size(), local_rank, device, rank() == 0)

    ws = _env_int("WORLD_SIZE", 1)
    if ws <= 1:
        return DistInfo(0, 1, local_rank, _default_device(local_rank), True)

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    rk = _env_int("RANK", -1)
    if rk < 0:
        raise ValueError("WORLD_SIZE > 1 but RANK is not set; launch with torchrun")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise ValueError(f"WORLD_SIZE > 1 but {var} is not set; launch with torchrun")

    use_cuda = torch.cuda.is_available() and backend in (None, "nccl")
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    device = _default_device(local_rank) if use_cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before init, so NCCL binds this rank's GPU
    # a peer that died before joining: rank 0 waits `timeout_s` for it, the others for rank 0's store
    with _collective("joining the process group"):
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rk,
            world_size=ws,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(rk, ws, local_rank, device, rk == 0)


def destroy_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if world_size() > 1:
        with _collective("barrier"):
            dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks, as a new tensor (the input on one process).

    For metrics: the result carries no gradient. Integer tensors are averaged in float32.
    """
    if world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    if not out.is_floating_point():
        out = out.float()
    with _collective("all_reduce"):
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum of ``tensor`` over ranks, as a new tensor (the input on one process); e.g. a stop flag."""
    if world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    with _collective("all_reduce"):
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank; returns it (the input on one process)."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    with _collective("broadcast"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


# torch >= 2.10 renamed all_gather_into_tensor (kept as a deprecated alias); take whichever exists.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, in rank order; no autograd."""
    x = x.contiguous()
    out = torch.empty((world_size() * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    with _collective("all_gather"):
        _all_gather_single(out, x)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """All-gather [B, ...] -> [W*B, ...] whose backward sums the gradient over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.local_batch = x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Rank r's loss L_r reads every rank's features, so rank s's features x_s receive gradient from
        # all W losses: d(sum_r L_r)/dx_s = sum_r (grad of rank r at rows of s). Summing (not averaging)
        # is what makes DDP's later 1/W averaging land on the one-process gradient of mean_r L_r.
        grad = grad.contiguous().clone()
        with _collective("all_reduce"):
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        b = ctx.local_batch
        start = rank() * b
        return grad[start : start + b]


def _check_equal_batches(x: torch.Tensor) -> None:
    # all_gather needs the same leading size on every rank; a mismatch would hang or garble the batch.
    sizes = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    all_sizes = _all_gather_cat(sizes)
    if bool((all_sizes != sizes).any()):
        raise ValueError(f"every rank must hold the same batch size to gather features, got {all_sizes.tolist()}")


def gather_with_grad(x: torch.Tensor, *, check_sizes: bool = False) -> torch.Tensor:
    """All-gather ``x`` [B, ...] (same B on every rank) into [world_size * B, ...], rank-major, with gradient.

    The backward all-reduces (sums) the incoming gradient and returns this rank's slice; see the module
    docstring for why this gives one-process gradients under DDP averaging (docs/DESIGN.md, 'Gathering with gradient').
    ``check_sizes`` adds one small collective that verifies the batch sizes match. Identity on one process.
    """
    if world_size() == 1:
        return x
    if check_sizes:
        _check_equal_batches(x)
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor, *, check_sizes: bool = False) -> torch.Tensor:
    """All-gather like the 2021 SLIP reference's ``utils.all_gather_batch``: the result carries **no** gradient.

    Even this rank's own slice of the result is a fresh copy, so gradient reaches ``x`` only through
    whatever uses ``x`` directly (the reference's CLIP loss: the local rows of the logits). On one
    process the reference returned its input unchanged, gradient included, and so does this function;
    that asymmetry is why the reference's CLIP objective depends on the number of GPUs
    (docs/DESIGN.md, 'Gathering with gradient').
    """
    if world_size() == 1:
        return x
    if check_sizes:
        _check_equal_batches(x)
    with torch.no_grad():
        return _all_gather_cat(x.detach())


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks (every rank's loss reads the total)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.contiguous().clone()
        with _collective("all_reduce"):
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        with _collective("all_reduce"):
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks with gradient, under the same convention as ``gather_with_grad``."""
    if world_size() == 1:
        return x
    return _AllReduceSumWithGrad.apply(x)


def average_gradients(module: torch.nn.Module) -> None:
    """Average ``.grad`` over ranks in place, for steps that bypass DDP (exact gradient accumulation)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    with _collective("all_reduce"):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
