"""Memory per GPU of SLIP training under DDP and FSDP at a global batch of 4,096 over N GPUs, computed (issue 29).

    python benchmarks/fsdp_memory.py [--gpus 8,64] [--global-batch 4096] [--json FILE]

Nothing runs: the figures follow from the parameter counts (models built on the `meta` device) and a per-sample
activation estimate, in GiB per GPU.

- **Model state**, float32 weights with AdamW: 4 bytes of weight, 4 of gradient and 8 of the two moments per
  parameter. DDP holds all of it on every GPU; FSDP holds 1/N of it, plus the gathered weights of the unit running
  now and of the next one (FSDP2 prefetches one), in bf16: 2 x 2 bytes x the largest block.
- **Activations** kept for the backward pass, bf16 under autocast, per transformer layer and sample: 34 x s x h
  bytes for s tokens of width h (Korthikanti et al. 2022, 'Reducing activation recomputation in large transformer
  models', §4.1, without the 5 a s^2 attention-score term, which PyTorch's fused attention does not keep). SLIP runs
  3 image views of 197 tokens through the ViT and a caption of at most 77 tokens through the text tower. With
  `train.grad_checkpointing=true` each layer keeps its input only (2 s h bytes), and one layer at a time is recomputed.
  The activations do not depend on DDP or FSDP: both columns get the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from openslip.models import create_model, model_config

MODELS = ("slip_vit_s16", "slip_vit_b16", "slip_vit_l16")
GIB = 2**30


def _layer_bytes(tokens: int, width: int, checkpointed: bool) -> float:
    return (2 if checkpointed else 34) * tokens * width


def per_gpu(name: str, gpus: int, global_batch: int) -> dict[str, float]:
    cfg = model_config(name)
    with torch.device("meta"):
        model = create_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    block = max(sum(p.numel() for p in b.parameters()) for b in [*model.visual.blocks, *model.transformer.resblocks])
    batch = global_batch // gpus
    v, t = cfg.vision, cfg.text
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    row: dict[str, float] = {"model": name, "gpus": gpus, "batch_per_gpu": batch, "params_m": params / 1e6}
    row["ddp_state_gib"] = 16 * params / GIB
    row["fsdp_state_gib"] = (16 * params / gpus + 2 * 2 * block) / GIB
    for ckpt in (False, True):
        sample = 3 * v.layers * _layer_bytes(tokens, v.width, ckpt) + t.layers * _layer_bytes(
            t.context_length, t.width, ckpt
        )
        if ckpt:  # the one layer being recomputed holds its full activations for the whole per-GPU batch
            sample += max(_layer_bytes(tokens, v.width, False) * 3, _layer_bytes(t.context_length, t.width, False))
        row["activations_ckpt_gib" if ckpt else "activations_gib"] = sample * batch / GIB
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="8,64", help="comma-separated GPU counts")
    parser.add_argument("--global-batch", type=int, default=4096)
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    try:
        gpus = [int(g) for g in args.gpus.split(",")]
    except ValueError:
        print(f"fsdp_memory.py: --gpus takes comma-separated integers, got {args.gpus!r}", file=sys.stderr)
        return 2
    if any(g < 1 or args.global_batch % g for g in gpus) or args.global_batch < 1:
        print(f"fsdp_memory.py: each GPU count must divide --global-batch {args.global_batch}", file=sys.stderr)
        return 2
    rows = [per_gpu(m, g, args.global_batch) for m in MODELS for g in gpus]
    print(
        "| model | GPUs | batch / GPU | params (M) | DDP state | FSDP state | activations | activations, checkpointed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['gpus']} | {r['batch_per_gpu']} | {r['params_m']:.0f} | {r['ddp_state_gib']:.2f} | "
            f"{r['fsdp_state_gib']:.2f} | {r['activations_gib']:.1f} | {r['activations_ckpt_gib']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
