"""Many GPUs, on paper: the bytes a SLIP training step moves between GPUs, and how long that takes (issue 27).

    python benchmarks/collectives.py [--models NAME,...] [--global-batch 4096] [--json FILE]

Nothing runs on a GPU: the bytes are counted from the model (built on the `meta` device, so even L/16 takes no
memory) and from what the loss gathers, and the times are bytes over an assumed bandwidth. Per step, each rank:

- all-gathers the embeddings the losses read, over the global batch G (openslip.losses): the CLIP image and text
  embeddings [G, embed_dim] and the two SimCLR views' head outputs [G, out_dim]. They are float32 whatever the
  precision: the losses cast to float32 and normalise *before* gathering (bf16 logits over thousands of
  candidates lose too much precision), so under bf16 autocast the gathered tensors are still 4 bytes per value.
  Their backward (distributed.gather_with_grad) all-reduces the gradient of the whole gathered tensor, then keeps
  this rank's slice: the same payload again, at the all-reduce's ring factor (a reduce-scatter would move half).
  Both lie on the critical path: the loss cannot start before the gathers, nor the towers' backward before theirs.
- all-reduces the parameter gradients (DDP, bucketed, float32 gradients: the weights stay float32 under autocast),
  4 bytes per parameter. DDP overlaps these buckets with the backward, so only the last bucket must be exposed;
  the fraction below is the share of the step it would take *without* any overlap, an upper bound.

Ring algorithm, p ranks, payload S bytes (the whole gathered / reduced tensor): each rank sends (p-1)/p x S for an
all-gather and 2(p-1)/p x S for an all-reduce; the time is that over the bus bandwidth (NCCL tests' `busbw`,
defined by these same factors). Latency is left out (see docs/PERFORMANCE.md, 'Many GPUs, on paper').

The step time beside each row is the model-only step of one GPU at the per-GPU batch G/p: per-GPU batch over the
samples/s measured on one H200 (bf16, batch 256, model-only; the faster end of the measured range), and for a
model without a measurement that of B/16 scaled by the ratio of training FLOPs (openslip.models.flops).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import openslip
from openslip.models import ModelConfig, model_config
from openslip.models.flops import slip_sample_flops

GLOBAL_BATCH = 4096
MODELS = ("slip_vit_s16", "slip_vit_b16", "slip_vit_l16")
SHORT = {"slip_vit_s16": "S/16", "slip_vit_b16": "B/16", "slip_vit_l16": "L/16"}
FP32_BYTES = 4  # gathered embeddings (cast by the losses) and parameter gradients (float32 weights)

# Model-only samples/s on one H200, bf16, batch 256 (`openslip bench train`, issue 27): the faster end of each
# measured range (B/16: 812-865), so the step is the shorter one and the fractions the larger ones.
MEASURED_SAMPLES_PER_S = {"slip_vit_s16": 1483.0, "slip_vit_b16": 865.0}
FLOPS_BASE = "slip_vit_b16"  # unmeasured models: its samples/s x its training FLOPs / theirs


@dataclass(frozen=True)
class Fabric:
    """How p GPUs are joined, and the bus bandwidth a ring collective reaches over it (an assumption)."""

    gpus: int
    name: str
    bus_gb_s: float  # GB/s = 1e9 bytes/s, per GPU, NCCL tests' busbw for large messages


def fabrics(nvlink_gb_s: float, ib_gb_s: float) -> tuple[Fabric, ...]:
    return (
        # NVLink 4 (H100 / H200 SXM): 450 GB/s per direction per GPU; NCCL reaches ~370-400 GB/s busbw on it
        Fabric(8, "1 node, NVLink 4", nvlink_gb_s),
        # across nodes the ring runs at the slowest hop: one NDR InfiniBand NIC per GPU, 400 Gb/s = 50 GB/s
        Fabric(64, "8 nodes, NDR InfiniBand", ib_gb_s),
    )


def gathered_widths(cfg: ModelConfig) -> dict[str, int]:
    """The [G, width] tensors the SLIP loss all-gathers each step (openslip.losses), by output key."""
    widths = {}
    if cfg.text is not None:  # clip_loss: image and text embeddings
        widths |= {"image_embed": cfg.embed_dim, "text_embed": cfg.embed_dim}
    if cfg.ssl_head is not None:  # simclr_loss: the head outputs of both views
        widths |= {"view1_embed": cfg.ssl_head.out_dim, "view2_embed": cfg.ssl_head.out_dim}
    return widths


def parameter_count(name: str) -> int:
    """Trainable parameters of `openslip.create_model(name)`, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = openslip.create_model(name)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def samples_per_s(name: str, global_batch: int) -> tuple[float, str]:
    """One GPU's model-only samples/s and where it comes from."""
    if name in MEASURED_SAMPLES_PER_S:
        return MEASURED_SAMPLES_PER_S[name], "measured"
    base, own = (slip_sample_flops(model_config(n), batch_size=global_batch).train for n in (FLOPS_BASE, name))
    return MEASURED_SAMPLES_PER_S[FLOPS_BASE] * base / own, f"{SHORT[FLOPS_BASE]} x FLOPs"


def ring_all_gather(payload: int, p: int) -> float:
    return (p - 1) / p * payload


def ring_all_reduce(payload: int, p: int) -> float:
    return 2 * (p - 1) / p * payload


@dataclass(frozen=True)
class Row:
    model: str
    params: int
    gather_payload: int  # bytes of the gathered embeddings, all of them, forward
    gather_grad_payload: int  # bytes of their gradient, all-reduced in the backward
    grad_payload: int  # bytes of the parameter gradients DDP all-reduces
    gpus: int
    fabric: str
    bus_gb_s: float
    per_gpu_batch: int
    gather_sent: float  # bytes each rank sends for the gathers, forward + backward (ring)
    grad_sent: float  # bytes each rank sends for the gradient all-reduce (ring)
    gather_ms: float
    grad_ms: float
    step_ms: float
    step_source: str

    @property
    def total_ms(self) -> float:
        """The step if nothing overlapped: compute, then the gathers (critical path), then every gradient bucket."""
        return self.step_ms + self.gather_ms + self.grad_ms

    @property
    def gather_fraction(self) -> float:
        return self.gather_ms / self.total_ms

    @property
    def grad_fraction(self) -> float:
        return self.grad_ms / self.total_ms


def estimate(name: str, global_batch: int, fabric: Fabric) -> Row:
    cfg = model_config(name)
    params = parameter_count(name)
    gather_payload = global_batch * sum(gathered_widths(cfg).values()) * FP32_BYTES
    grad_payload = params * FP32_BYTES
    p = fabric.gpus
    gather_sent = ring_all_gather(gather_payload, p) + ring_all_reduce(gather_payload, p)
    grad_sent = ring_all_reduce(grad_payload, p)
    speed, source = samples_per_s(name, global_batch)
    per_gpu = global_batch // p
    to_ms = 1e3 / (fabric.bus_gb_s * 1e9)
    return Row(
        model=name,
        params=params,
        gather_payload=gather_payload,
        gather_grad_payload=gather_payload,
        grad_payload=grad_payload,
        gpus=p,
        fabric=fabric.name,
        bus_gb_s=fabric.bus_gb_s,
        per_gpu_batch=per_gpu,
        gather_sent=gather_sent,
        grad_sent=grad_sent,
        gather_ms=gather_sent * to_ms,
        grad_ms=grad_sent * to_ms,
        step_ms=per_gpu / speed * 1e3,
        step_source=source,
    )


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def table(rows: list[Row]) -> str:
    head = [
        "| model | params | GPUs | fabric (bus GB/s) | batch / GPU | gathers fwd + bwd: MB sent / GPU, ms "
        "| grad all-reduce: MB sent / GPU, ms | compute step ms (source) | gathers % | grads % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = [
        f"| {SHORT.get(r.model, r.model)} | {r.params / 1e6:.1f} M | {r.gpus} | {r.fabric} ({r.bus_gb_s:g}) "
        f"| {r.per_gpu_batch} | {_mb(r.gather_sent)}, {r.gather_ms:.2f} | {_mb(r.grad_sent)}, {r.grad_ms:.2f} "
        f"| {r.step_ms:.0f} ({r.step_source}) | {100 * r.gather_fraction:.1f} | {100 * r.grad_fraction:.1f} |"
        for r in rows
    ]
    return "\n".join(head + lines)


def payload_table(rows: list[Row], global_batch: int) -> str:
    seen = {}
    for r in rows:
        seen.setdefault(r.model, r)
    head = [
        f"| model | params | gradients, fp32 (MB) | gathered embeddings at G = {global_batch:,}, fp32 (MB) "
        "| their gradient, all-reduced (MB) |",
        "|---|---|---|---|---|",
    ]
    lines = [
        f"| {SHORT.get(r.model, r.model)} | {r.params:,} | {_mb(r.grad_payload)} | {_mb(r.gather_payload)} "
        f"| {_mb(r.gather_grad_payload)} |"
        for r in seen.values()
    ]
    return "\n".join(head + lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="collectives.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registered models")
    parser.add_argument("--global-batch", type=int, default=GLOBAL_BATCH, help="samples per step, all GPUs")
    parser.add_argument("--nvlink-gb-s", type=float, default=370.0, help="assumed bus GB/s within a node")
    parser.add_argument("--ib-gb-s", type=float, default=50.0, help="assumed bus GB/s across nodes, per GPU")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    known = openslip.list_models()
    for name in args.models:
        if name not in known:
            parser.error(f"unknown model {name!r}; see openslip.list_models()")
    if args.global_batch <= 0 or any(args.global_batch % f.gpus for f in fabrics(1, 1)):
        parser.error(f"--global-batch must be a positive multiple of 64 (8 and 64 GPUs), got {args.global_batch}")
    if not (args.nvlink_gb_s > 0 and args.ib_gb_s > 0):
        parser.error("bandwidths must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = [estimate(m, args.global_batch, f) for m in args.models for f in fabrics(args.nvlink_gb_s, args.ib_gb_s)]
    print(payload_table(rows, args.global_batch))
    print()
    print(table(rows))
    if args.json:
        extra = ("total_ms", "gather_fraction", "grad_fraction")
        args.json.write_text(json.dumps([asdict(r) | {k: getattr(r, k) for k in extra} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
