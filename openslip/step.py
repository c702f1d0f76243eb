"""One optimisation step, shared by every loop that trains.

Pre-training (`train.train_step`), finetuning (`eval/finetune.py`), the SGD linear probe (`eval/linear.py`)
and `openslip bench train` all run `OptimStep`: the learning rate of the step from one schedule (scaled per
parameter group by an optional ``lr_scale``, the finetuning's layer decay), the forward pass under the
precision's autocast, a finite-loss check that stops every rank at the same step, the backward pass through
the fp16 loss scaler, and the update with the gradient norm measured (and clipped when asked).

Keeping the mechanics in one place is what makes them agree: before, only pre-training stopped on a NaN
loss, and the benchmark timed its own copy of the step rather than the one `openslip train` runs.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from openslip import distributed
from openslip.errors import TrainingError

# The dtype of each precision name (`train.precision`, `openslip bench train --precision`, finetuning's). bf16 and
# fp16 are autocast: the forward runs in them, the weights and the optimizer stay float32. fp64 runs the whole step
# in float64: weights, views, losses and AdamW. Adam turns the rounding noise of a near-zero gradient into a step of
# about lr, whose sign depends on the order of float operations (thread count, instruction set); in float64 that
# noise sits far below AdamW's eps, so two CPUs give the same losses to ~1e-10 instead of drifting apart within a
# few steps. For numerics checks (the golden-loss test); slow.
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
# Autocast dtypes by precision name; fp32 and fp64 run without autocast.
AMP_DTYPES = {name: PRECISION_DTYPES[name] for name in ("bf16", "fp16")}


def param_dtype(precision: str) -> torch.dtype:
    """The dtype of the weights (and the views fed to them) at ``precision``: float32 under autocast."""
    return torch.float32 if precision in AMP_DTYPES else PRECISION_DTYPES[precision]


def autocast(device_type: str, precision: str) -> AbstractContextManager:
    """The forward passes' context for ``precision``: autocast to bf16 / fp16, or nothing."""
    dtype = AMP_DTYPES.get(precision)
    return torch.autocast(device_type, dtype=dtype) if dtype else nullcontext()


class PhaseClock:
    """Wall time per phase of a step (``lap`` closes the phase that just ran). The device is synchronised at
    each lap, so queued GPU work counts in the phase that queued it: for benchmarks, never in training."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times[phase] = self.times.get(phase, 0.0) + now - self._last
        self._last = now


def timed_step(
    device: torch.device, get_inputs: Callable[[], dict], body: Callable[[dict, PhaseClock], object]
) -> tuple[dict[str, float], dict]:
    """One benchmarked step: ``get_inputs()`` timed as the "data" phase, then ``body(inputs, clock)``, which laps
    its own phases. Returns (seconds per phase plus the step's minor page faults and system CPU seconds, inputs)."""
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    clock = PhaseClock(device)
    inputs = get_inputs()
    clock.lap("data")
    body(inputs, clock)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    times = dict(clock.times)
    times.update(minor_faults=usage1.ru_minflt - usage0.ru_minflt, sys_s=usage1.ru_stime - usage0.ru_stime)
    return times, inputs


class _NoClock:
    """What training passes: laps cost nothing and never synchronise the device."""

    def lap(self, phase: str) -> None:
        pass


NO_CLOCK = _NoClock()


def check_finite(loss: torch.Tensor, *, what: str, step: int, detail: str | Callable[[], str] = "") -> None:
    """Stop with one line when the loss of any rank is NaN or inf. Every rank checks the same all-reduced flag,
    so all of them stop at the same step (none waits in a collective for one that left). ``detail`` is called
    only on failure and gives the rest of the line: the batch's samples, what there is to go back to."""
    bad = (~torch.isfinite(loss.detach()).all()).float()  # on the device: the one host read is the reduced flag
    if distributed.all_reduce_mean(bad).item() > 0:
        rest = detail() if callable(detail) else detail
        raise TrainingError(f"{what}: non-finite loss {loss.detach().float().mean().item()} at step {step}{rest}")


def non_finite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the floating tensors that hold inf or NaN. One flag per tensor, read back once: a few hundred
    small reductions, cheap beside a step, which is why training checks at log steps and before each save only."""
    # a sharded weight (FSDP's DTensor) is checked on this rank's shard: the flag is all-reduced by the callers
    floats = [(name, getattr(t, "to_local", lambda t=t: t)().detach()) for name, t in named if t.is_floating_point()]
    if not floats:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in floats]).tolist()
    return [name for (name, _), ok in zip(floats, flags, strict=True) if not ok]


def check_finite_weights(model: torch.nn.Module, *, what: str, step: int, detail: str | Callable[[], str] = "") -> None:
    """Stop with one line when any weight of ``model`` is NaN or inf: a learning rate far too large can overflow
    the weights in one update while the loss of that step was still finite. The flag is all-reduced like the
    loss's, so every rank stops at the same step."""
    bad_names = non_finite_tensors(model.state_dict().items())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    bad = torch.tensor(1.0 if bad_names else 0.0, device=device)
    if distributed.all_reduce_mean(bad).item() > 0:
        rest = detail() if callable(detail) else detail
        shown = ", ".join(bad_names[:5]) + (f", ... ({len(bad_names)} tensors)" if len(bad_names) > 5 else "")
        where = f" ({shown})" if shown else " (on another rank)"
        raise TrainingError(f"{what}: non-finite weights (inf / NaN) after step {step}{where}{rest}")


@dataclass
class OptimStep:
    """An optimizer with its schedule, precision, loss scaler and clipping: what one step of any loop needs.

    ``schedule(step)`` gives the learning rate of a step; a parameter group's ``lr_scale`` (if it has one)
    multiplies it. ``grad_clip`` None measures the gradient norm without changing the gradients."""

    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float]
    device_type: str = "cpu"
    precision: str = "fp32"
    grad_clip: float | None = None
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        # Loss scaling only for fp16: bf16 has fp32's exponent range, so its gradients do not underflow.
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.precision == "fp16")

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device_type, self.precision)

    def set_lr(self, step: int) -> float:
        """Set every group's learning rate for ``step``; returns the schedule's value."""
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    @property
    def lr(self) -> float:
        """The learning rate of the first group at the current step (what training logs)."""
        return self.optimizer.param_groups[0]["lr"]

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to back-propagate (multiplied by the fp16 loss scale; unchanged otherwise)."""
        return self.scaler.scale(loss)

    def backward(self, loss: torch.Tensor) -> None:
        self.scale(loss).backward()

    def update(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        """Unscale, measure the gradient norm of ``params`` (clipping it to ``grad_clip`` when set), step the
        optimizer and the scaler, and clear the gradients; returns the norm (before clipping)."""
        params = [p for p in params if p.grad is not None]
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.grad_clip is not None:  # the two halves of clip_grad_norm_, so the norm comes back unclipped
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        if hasattr(norm, "full_tensor"):  # sharded gradients (FSDP): the norm over every rank's shards
            norm = norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
