"""BatchNorm over the global batch, on every backend (torch's SyncBatchNorm refuses CPU / gloo tensors).

The SimCLR head's BatchNorm in the reference is a SyncBatchNorm: its statistics span all GPUs. Here
the per-rank sums are all-reduced with gradient (`all_reduce_sum_with_grad`), so N processes compute
the same normalisation, loss and gradients as one process holding the whole batch.

It sits beside `distributed.py`, not in `models/`: a model knows nothing of processes. Training swaps the SimCLR
head's `nn.BatchNorm1d` for it when it runs on several processes (`convert_global_batchnorm`, train/loop.py).
"""

from __future__ import annotations

import torch
from torch import nn

from openslip.distributed import all_reduce_sum_with_grad, world_size


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """`nn.BatchNorm1d` whose training statistics are over all ranks; same parameters and buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 at least; fp64 stays fp64
        count = torch.tensor([float(x.shape[0])], device=x.device, dtype=xf.dtype)
        stats = torch.cat([count, xf.sum(0), (xf * xf).sum(0)])  # one collective for all three
        stats = all_reduce_sum_with_grad(stats)
        n = stats[0]
        mean = stats[1 : 1 + x.shape[1]] / n
        var = stats[1 + x.shape[1] :] / n - mean * mean  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every `nn.BatchNorm1d` inside `module` for a `GlobalBatchNorm1d` holding the same state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            new = GlobalBatchNorm1d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            new.to(device=child.weight.device if child.affine else None)
            setattr(module, name, new)
        else:
            convert_global_batchnorm(child)
    return module
