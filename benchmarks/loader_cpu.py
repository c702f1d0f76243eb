"""The loader's CPU per sample and the training process's page faults per batch, on photo-like JPEG shards.

Two measures, each in its own process, interleaved over the checkouts given and repeated (see
docs/PERFORMANCE.md, 'Loader workers: CPU and memory'):

- ``inprocess``: the workers' code run in this process on one thread (data.num_workers=0): the CPU time it takes to
  build the batches, per sample. Nothing else runs in the process, so this is the steadiest figure.
- ``worker``: one loader worker process; the training process reads every byte of each batch once (as a CUDA run's
  pinning does) and hands the batch back (``TrainLoader.release``, where the checkout has it). The worker's CPU per
  sample (its own thread time, sent with each batch) and the training process's minor page faults per batch.

    python benchmarks/loader_cpu.py --trees . ../before --augment device --rounds 2

Without ``--shards``, 512 photo-like 500 x 375 JPEGs (quality 90) are made and written as 8 shards first
(``gpu_check.make_images``, ``openslip data make-shards``), in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent


def measure(mode: str, shards: str, augment: str, precision: str, image_size: int, batch: int, steps: int) -> dict:
    """One measure in this process (the checkout is whatever ``openslip`` imports here)."""
    import torch

    import openslip.train.data as train_data
    from openslip.overrides import parse_overrides
    from openslip.train.config import config_from_dict

    torch.set_num_threads(1)
    workers = 0 if mode == "inprocess" else 1
    if hasattr(train_data, "views_travel_as") and workers:  # a checkout with the ring: on, as a CUDA run has it
        build = train_data.build_train_loader
        train_data.build_train_loader = lambda *a, **k: build(*a, **{**k, "reuse_buffers": True})
    settings = [
        "model=slip_vit_micro",
        f"train.batch_size={batch}",
        f"data.num_workers={workers}",
        f"data.augment={augment}",
        f"train.precision={precision}",
        f"data.train={shards}",
    ]
    cfg = config_from_dict(parse_overrides(settings))
    data = train_data.build_train_data(cfg, image_size, ("image", "view1", "view2"), True, 0, 1, torch.device("cpu"))
    loader = data.loader
    batches = loader.forever()
    warmup, samples, faults = 2, 0, 0
    try:
        for step in range(warmup + steps):
            if step == warmup:
                cpu0, thread0 = loader.cpu_s, time.thread_time()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            b = next(batches)
            for value in b.values():  # every page once
                if isinstance(value, torch.Tensor) and value.numel():
                    value.reshape(-1).view(torch.uint8)[::1024].sum()
            if hasattr(loader, "release"):
                loader.release(b)
            if step >= warmup:
                faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
                samples += len(b["id"])
        cpu = loader.cpu_s - cpu0 if workers else time.thread_time() - thread0
    finally:
        batches.close()  # the worker ends now (a live one would hold the interpreter's exit)
    return {"cpu_ms_per_sample": 1000 * cpu / samples, "faults_per_batch": faults / steps}


def _make_shards(folder: Path) -> str:
    sys.path.insert(0, str(BENCHMARKS))
    from gpu_check import make_images

    manifest = make_images(folder / "images", 512, (500, 375))
    from openslip.cli import main

    if main(["data", "make-shards", str(manifest), str(folder / "shards"), "--shard-size", "64"]) != 0:
        raise SystemExit("loader_cpu.py: making the shards failed")
    return str(folder / "shards" / "shard-{000000..000007}.tar")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loader_cpu.py", description=__doc__.splitlines()[0])
    p.add_argument("--trees", nargs="+", default=["."], help="checkouts to compare (each on PYTHONPATH in turn)")
    p.add_argument("--shards", help="a brace-expanded shard spec; default: make 512 photo-like JPEGs")
    p.add_argument("--augment", choices=("device", "cpu"), default="device")
    p.add_argument("--precision", default="fp32", help="train.precision (bf16: the CPU views travel as bf16)")
    p.add_argument("--modes", nargs="+", choices=("inprocess", "worker"), default=["inprocess", "worker"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output", help="write the rows as JSON here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measure, printed as JSON
    args = p.parse_args(argv)
    if args.one:
        row = measure(args.one, args.shards, args.augment, args.precision, args.image_size, args.batch, args.steps)
        print(json.dumps(row))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or _make_shards(Path(tmp))
        rows = []
        for round_ in range(args.rounds):
            for mode in args.modes:
                for tree in args.trees:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", mode, "--shards", shards]
                    cmd += ["--augment", args.augment, "--precision", args.precision, "--image-size"]
                    cmd += [str(args.image_size), "--batch", str(args.batch), "--steps", str(args.steps)]
                    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
                    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
                    if done.returncode != 0:
                        print(f"loader_cpu.py: {tree} {mode}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                        return 1
                    row = {"tree": tree, "mode": mode, "round": round_, **json.loads(done.stdout.splitlines()[-1])}
                    rows.append(row)
                    print(
                        f"{mode:9s} {tree:30s} round {round_}: {row['cpu_ms_per_sample']:.2f} ms CPU per sample, "
                        f"{row['faults_per_batch']:.0f} page faults per batch in the training process",
                        flush=True,
                    )
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
