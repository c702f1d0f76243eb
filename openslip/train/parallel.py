"""How the model is spread over the processes of a run (`train.parallel`): DDP, or PyTorch's FSDP2 (`fully_shard`).

DDP keeps a whole copy of the weights, gradients and AdamW state on every rank and all-reduces the gradients. FSDP2
shards all three over the ranks: each transformer block of both towers is its own unit, gathered just before it
runs and freed after, and the rest (embeddings, projections, heads, the final norms) is the root's unit. The
gradients are reduce-scattered, averaged over ranks as DDP averages them, so the update is the same
(docs/TRAINING.md, 'Sharded training (FSDP)'). Two things stay whole on every rank:

- scalar parameters (`logit_scale`, SigLIP's `logit_bias`), which `fully_shard` cannot split: their gradients are
  averaged here after the backward pass (`average_whole_gradients`);
- what leaves the training step: checkpoints and evaluations see the full weights, gathered with
  `torch.distributed.checkpoint`'s state-dict functions (`full_weights`, `full_optimizer_state`), so a checkpoint of
  a sharded run is the same file as a DDP run's: any world size resumes it, and every command reads it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from openslip import distributed
from openslip.models import SLIP, create_model


def _fsdp():
    # imported on use: the sharded path is the only one that needs it
    from torch.distributed import fsdp

    return fsdp


def is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def shard(model: SLIP, precision: str) -> None:
    """Apply FSDP2 to `model` in place: every ViT block and text block its own unit, then the root; scalars whole.

    `precision` bf16 / fp16 gathers the weights in that dtype for the forward pass and reduces the gradients in
    float32 (FSDP's MixedPrecisionPolicy), beside the step's autocast."""
    fsdp = _fsdp()
    kwargs: dict[str, Any] = {}
    if precision in ("bf16", "fp16"):
        low = torch.bfloat16 if precision == "bf16" else torch.float16
        kwargs["mp_policy"] = fsdp.MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    for block in model.visual.blocks:
        fsdp.fully_shard(block, **kwargs)
    if model.has_text:
        for block in model.transformer.resblocks:
            fsdp.fully_shard(block, **kwargs)
    # the forward outputs are views (one ViT call for all views, split): FSDP warns that an in-place op on one would
    # skip its hooks; the losses never write into the model's outputs, so the warning says nothing here
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    scalars = {p for p in model.parameters() if p.ndim == 0}
    fsdp.fully_shard(model, ignored_params=scalars, **kwargs)
    # the methods the training step and exact accumulation call besides forward gather the root's weights too
    for method in ("forward_features", "forward_heads"):
        fsdp.register_fsdp_forward_method(model, method)


def whole_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The parameters a sharded model keeps whole on every rank (its scalars); [] for a model that is not sharded."""
    if not is_sharded(model):
        return []
    return [p for p in model.parameters() if type(p).__name__ != "DTensor"]


def average_whole_gradients(model: nn.Module) -> None:
    """Average over ranks the gradients FSDP does not reduce (the scalars'), as DDP would."""
    for p in whole_parameters(model):
        if p.grad is not None:
            p.grad.copy_(distributed.all_reduce_mean(p.grad))


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded model on every rank (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def whole_copy(model: SLIP) -> SLIP:
    """A plain (unsharded) model with the weights of `model`, for what runs outside the training step: evaluation
    and saving. `model` itself when it is not sharded. A collective under FSDP: every rank calls it."""
    if not is_sharded(model):
        return model
    param = next(p for p in model.parameters() if type(p).__name__ == "DTensor")
    copy = create_model(model.cfg).to(param.device, dtype=param.dtype)  # the dtype first: float64 stays float64
    copy.load_state_dict(full_weights(model))
    return copy


def load_full_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (a checkpoint's) into a sharded model: each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state with full tensors keyed by parameter name (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def full_state_mib(model: nn.Module) -> float:
    """MiB of the whole model's weights and AdamW state (two moments per weight), as one DDP rank holds them."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) * 3 / 2**20


def local_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of weights, gradients and optimizer state this rank holds (its shards under FSDP)."""

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if type(t).__name__ == "DTensor" else t

    total = 0
    for p in model.parameters():
        total += local(p).numel() * p.element_size()
        if p.grad is not None:
            total += local(p.grad).numel() * p.grad.element_size()
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                total += local(v).numel() * v.element_size()
    return total


def keyed_by_name(state: dict[str, Any]) -> bool:
    """Whether an optimizer state dict names its parameters (what an FSDP run saves through the state-dict functions
    of torch.distributed.checkpoint) rather than numbering them (torch's own, what a DDP run saves)."""
    return any(isinstance(i, str) for g in state.get("param_groups", []) for i in g["params"])


def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict:
    """An optimizer state dict keyed by parameter index (torch's, what a DDP run saves) keyed by parameter name
    instead (what the state-dict functions of torch.distributed.checkpoint read); a state keyed by name as it is."""
    if keyed_by_name(state):
        return state
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {order[int(i)]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]],
    }
