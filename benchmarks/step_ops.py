"""Which operators one training step calls, and where from: the copies and concatenations of issue 27's profile.

One step of `openslip train`'s own step (``openslip.train.loop.optimise``, as `openslip bench train` times it) on
synthetic inputs runs under a dispatch mode that counts every ATen operator named in ``--ops``. A call in the forward
pass or the optimizer is put down to the innermost openslip or torch.nn / torch.optim frame that made it (file and
line); a call in the backward pass to the autograd node that runs it (``ToCopyBackward0``: the gradient of an
autocast cast). The counts do not depend on the speed of the machine, only on the device type (autocast's cast
lists differ between CPU and CUDA, and on a CPU openslip runs bf16 attention in fp32, two more casts per layer).

    python benchmarks/step_ops.py model=slip_vit_b16 train.precision=bf16 train.batch_size=2 --ops _to_copy,cat
    python benchmarks/step_ops.py model=slip_vit_b16 train.precision=bf16 train.batch_size=256 --device cuda
    python benchmarks/step_ops.py model=slip_vit_micro --ops _local_scalar_dense,nonzero   # reads back to the host

The table and the JSON (``--output``) give, per operator, the calls per step and the origins that make them.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# the frames an operator call is put down to: openslip's own, and torch's modules and optimizers
OWN_FRAMES = ("/openslip/", "/torch/nn/modules/", "/torch/nn/functional", "/torch/optim/", "/torch/nn/utils/")


def origin_of(frames: list[traceback.FrameSummary]) -> str:
    """ "backward: ToCopyBackward0" in the backward pass, else the innermost frame of OWN_FRAMES ("file.py:line")."""
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"backward: {node.name()}"
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        if any(part in path for part in OWN_FRAMES):
            return f"{path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "elsewhere"


class OpCounter(TorchDispatchMode):
    """Counts the calls of the operators in ``ops`` (overload packets: "_to_copy", "cat") by origin."""

    def __init__(self, ops: set[str]) -> None:
        super().__init__()
        self.ops = ops
        self.counts: dict[str, collections.Counter] = {op: collections.Counter() for op in ops}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.ops:
            self.counts[name][origin_of(traceback.extract_stack()[:-1])] += 1
        return func(*args, **(kwargs or {}))


def count_step_ops(settings: list[str], ops: set[str], device: str) -> dict[str, Any]:
    """One warm-up step, then one counted step, of the trainer that `openslip bench train SETTINGS` builds."""
    from openslip.bench.training import Stepper, TrainBenchConfig, resolve_device, synthetic_inputs, train_config
    from openslip.distributed import DistInfo
    from openslip.overrides import parse_overrides
    from openslip.train.loop import build_trainer

    where = resolve_device(device)
    bc = TrainBenchConfig(settings=parse_overrides(settings))
    with tempfile.TemporaryDirectory(prefix="openslip-ops-") as out_dir:
        cfg = train_config(bc, out_dir)
        trainer = build_trainer(cfg, DistInfo(0, 1, 0, where, True))
        size, batch = trainer.model.cfg.vision.image_size, cfg.train.batch_size
        stepper = Stepper(trainer, baseline=False, batch_size=batch, image_size=size)
        inputs = synthetic_inputs(trainer.model, batch, size, where, 77, cfg.loss.local_crops)
        stepper.step(lambda: inputs)  # the first step builds the optimizer state
        with OpCounter(ops) as counter:
            stepper.step(lambda: inputs)
    return {
        "model": cfg.model,
        "precision": cfg.train.precision,
        "batch_size": batch,
        "device": where.type,
        "ops": {op: {"calls": sum(c.values()), "origins": dict(c.most_common())} for op, c in counter.counts.items()},
    }


def table(result: dict[str, Any], top: int) -> str:
    lines = [f"{result['model']}, {result['precision']}, batch {result['batch_size']}, {result['device']}: one step"]
    for op, found in result["ops"].items():
        lines.append(f"aten::{op}: {found['calls']} calls")
        for where, n in list(found["origins"].items())[:top]:
            lines.append(f"  {n:6d}  {where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="*", help="training settings as `openslip bench train` takes them")
    p.add_argument("--ops", default="_to_copy,copy_,cat,stack", help="ATen operators to count, comma-separated")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--top", type=int, default=12, help="origins shown per operator")
    p.add_argument("--output", type=Path, default=None, help="write the counts as JSON")
    args = p.parse_args(argv)
    from openslip.errors import UserError

    try:
        result = count_step_ops(args.settings, set(args.ops.split(",")), args.device)
    except UserError as err:  # a setting the trainer refuses: its one line
        print(f"step_ops.py: error: {err}", file=sys.stderr)
        return 2
    print(table(result, args.top))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
