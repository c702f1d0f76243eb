"""One-GPU check of what users run, in bf16 at batch 256, in about 8 minutes on one H100/H200-class GPU, in order:

1. `openslip bench train --compare-reference PATH`: the 2021 SLIP code beside openslip, S/16 and B/16 (skipped,
   with the reason, without `--reference PATH`, a checkout of facebookresearch/SLIP);
2. model-only steps, eager and compiled (`train.compile=true`), S/16 and B/16 (and last, if the budget leaves room,
   S/16 compiled with CUDA graphs, `train.compile_mode=reduce-overhead`);
3. end to end on JPEG shards the script makes first (photo-like ~500x375 images, quality 90, written by
   `openslip data make-shards`), with `data.augment=cpu`, `data.augment=device` and `data.decode=device` (where
   this version of openslip has that setting): the end-to-end / model-only ratio, the loader's CPU time per
   sample and the data wait per step;
4. `openslip train` under torchrun (NCCL) on those shards for about 30 s: samples/s and whether the loss falls.

    python benchmarks/gpu_check.py --reference ~/SLIP --output gpu_check.json    # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run --output dry.json                    # CPU: every path, micro model

Each case runs in a fresh process with its own timeout (an out-of-memory error or a hang stays in its row); a case
whose typical duration no longer fits the time budget is listed as skipped with the reason, never dropped. Rows
are printed as they finish, then one table; everything goes to one JSON.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SHORT = {"slip_vit_s16": "S/16", "slip_vit_b16": "B/16", "slip_vit_micro": "micro"}
KINDS = ("reference", "model", "shards", "data", "train", "graphs")


@dataclass(frozen=True)
class Plan:
    """What the cases run: the GPU settings, or the dry run's (CPU, micro model, 32 px, tiny shards)."""

    dry_run: bool
    models: tuple[str, ...]
    batch_size: int
    bench_flags: tuple[str, ...]  # device, precision, steps, warm-up, matmul-peak budget
    images: int  # photo-like images in the shards
    image_wh: tuple[int, int]  # their landscape size (a quarter are portrait)
    shard_size: int
    workers: int  # loader workers of the data cases and the training run
    train_seconds: float  # about how long the torchrun training runs
    train_flags: tuple[str, ...]


def plan(dry_run: bool, workers: int, images: int) -> Plan:
    if dry_run:
        return Plan(
            dry_run=True,
            models=("slip_vit_micro",),
            batch_size=8,
            bench_flags=tuple(
                "--device cpu train.precision=fp32 --steps 2 --warmup 1 --peak-budget 0.05 data.image_size=32".split()
            ),
            images=min(images, 64),
            image_wh=(160, 120),
            shard_size=16,
            workers=min(workers, 2),
            train_seconds=0.0,  # a fixed 4 steps
            train_flags=("data.image_size=32", "optim.warmup_steps=0"),
        )
    return Plan(
        dry_run=False,
        models=("slip_vit_s16", "slip_vit_b16"),
        batch_size=256,
        bench_flags=tuple("--device cuda train.precision=bf16 --steps 8 --warmup 3 --peak-budget 0.5".split()),
        images=images,
        image_wh=(500, 375),
        shard_size=128,  # 32 shards for 4,096 images: every one of 14 workers gets some
        workers=workers,
        train_seconds=30.0,
        train_flags=("train.precision=bf16", "optim.lr=5e-4", "optim.warmup_steps=20"),
    )


@dataclass
class Case:
    """One measurement: a fresh process (two for the shards), its timeout and what it typically takes."""

    kind: str  # reference | model | shards | data | train | graphs (model-only, compiled with CUDA graphs)
    model: str = ""
    compile: bool = False
    augment: str = ""  # data: cpu | device
    decode: str = ""  # data: device (only where openslip has the setting data.decode)
    timeout_s: float = 120.0
    expect_s: float = 30.0  # not started with less budget left than this

    @property
    def name(self) -> str:
        model = SHORT.get(self.model, self.model)
        if self.kind == "reference":
            return f"reference {model}"
        if self.kind == "model":
            return f"model {model}" + (" compile" if self.compile else " eager")
        if self.kind == "graphs":
            return f"model {model} graphs"
        if self.kind == "data":
            return f"data {model} " + (f"decode={self.decode}" if self.decode else f"augment={self.augment}")
        if self.kind == "train":
            return f"train {model} torchrun"
        return "make shards"


def cases(p: Plan) -> list[Case]:
    """In the order they run (the priority order when the budget runs short)."""
    cpu = p.dry_run
    out = [Case("reference", m, timeout_s=60 if cpu else 150, expect_s=10 if cpu else 35) for m in p.models]
    out += [Case("model", m, timeout_s=60 if cpu else 90, expect_s=10 if cpu else 20) for m in p.models]
    # compiling SLIP (two towers, forward and backward) takes a minute or more: a timeout that leaves room for it
    out += [Case("model", m, compile=True, timeout_s=90 if cpu else 200, expect_s=10 if cpu else 75) for m in p.models]
    out.append(Case("shards", timeout_s=60 if cpu else 150, expect_s=5 if cpu else 30))
    # A B/16 step at batch 256 is about 0.3 s: 11 steps in each of the two phases, the 14 workers' start and the
    # first batches, CUDA's start-up
    data = {"timeout_s": 60 if cpu else 120, "expect_s": 10 if cpu else 25}
    for m in reversed(p.models):  # B/16 first: the model a GPU node is most likely to train
        out += [Case("data", m, augment="device", **data)]
        if m == p.models[-1]:  # the CPU views on the largest model only, whose longer step gives them the most time:
            out += [Case("data", m, augment="cpu", **data)]  # the 8-minute budget has no room for both
        out += [Case("data", m, augment="device", decode="device", **data)]
    out.append(Case("train", p.models[0], augment="device", timeout_s=60 if cpu else 150, expect_s=10 if cpu else 55))
    # last, as an experiment beyond the 8 minutes (alone: --only graphs): S/16, launch-bound, compiled with CUDA graphs
    # (train.compile_mode=reduce-overhead)
    graphs = {"timeout_s": 90 if cpu else 200, "expect_s": 10 if cpu else 75}
    out.append(Case("graphs", p.models[0], compile=True, **graphs))
    return out


# --- running a process ----------------------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    """openslip's CLI in this interpreter and environment (PYTHONPATH included: no install needed)."""
    return [sys.executable, "-m", "openslip.cli", *args]


def run_process(argv: list[str], timeout_s: float, env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """(exit code or None on timeout, stdout, stderr). The process runs in its own session so that a timeout ends
    its children too (loader workers, torchrun's worker), which would otherwise keep the GPU."""
    env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    try:
        out, err = proc.communicate(timeout=max(timeout_s, 1.0))
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
            try:
                os.killpg(proc.pid, sig)
                out, err = proc.communicate(timeout=wait)
                return None, out, err
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        return None, "", ""


def failure(rc: int | None, out: str, err: str, timeout_s: float) -> str:
    if rc is None:
        return f"timeout after {timeout_s:.0f} s"
    if "out of memory" in (out + err).lower():
        return "out of memory"
    tail = [line for line in (err or out).strip().splitlines() if line.strip()][-1:] or ["no output"]
    return f"failed (exit {rc}): {tail[0][:200]}"


def decode_flag_available() -> bool:
    """Whether this version of openslip has the setting data.decode (the data path that decodes on the device)."""
    probe = "import dataclasses as d, openslip.train.config as c; "
    probe += "print('decode' in [f.name for f in d.fields(c.DataConfig)])"
    rc, out, _ = run_process([sys.executable, "-c", probe], 120)
    return rc == 0 and out.strip() == "True"


# --- photo-like JPEG shards -----------------------------------------------------------------------------------

COLOURS = {
    "red": (200, 40, 40),
    "green": (50, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 210, 50),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
    "orange": (240, 140, 30),
    "purple": (130, 50, 160),
}
SHAPES = ("circle", "square", "triangle")


def photo_like(job: tuple[int, str, int, int, int]) -> tuple[str, str]:
    """One JPEG (quality 90) that costs what a photo costs to decode: smooth random colour fields at two scales,
    a few soft-edged coloured shapes and sensor-like noise (flat colours would compress, and decode, far faster).
    Drawn at half size and upscaled, which softens the edges as a lens does. Returns (file name, caption); the
    caption names the shapes, so that the contrastive loss has something to learn."""
    import numpy as np
    from PIL import Image, ImageDraw

    index, folder, width, height, seed = job
    rng = np.random.default_rng([seed, index])
    if index % 4 == 3:  # a quarter portrait
        width, height = height, width
    w, h = width // 2, height // 2
    octaves = [rng.integers(0, 256, (cells, cells * 4 // 3, 3), dtype=np.uint8) for cells in (3, 12)]
    coarse, fine = (Image.fromarray(o).resize((w, h), Image.BICUBIC) for o in octaves)
    image = Image.blend(coarse, fine, 0.3)
    draw = ImageDraw.Draw(image)
    words = []
    for _ in range(int(rng.integers(1, 4))):
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        size = int(rng.integers(min(w, h) // 6, min(w, h) // 2))
        x, y = int(rng.integers(0, w - size)), int(rng.integers(0, h - size))
        fill = tuple(int(c) for c in np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 21, 3), 0, 255))
        if shape == "circle":
            draw.ellipse((x, y, x + size, y + size), fill=fill)
        elif shape == "square":
            draw.rectangle((x, y, x + size, y + size), fill=fill)
        else:
            draw.polygon(((x + size // 2, y), (x, y + size), (x + size, y + size)), fill=fill)
        words.append(f"a {colour} {shape}")
    pixels = np.asarray(image.resize((width, height), Image.BICUBIC), np.int16)
    pixels = pixels + rng.integers(-10, 11, pixels.shape, dtype=np.int16)
    name = f"{index:06d}.jpg"
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(Path(folder) / name, quality=90)
    return name, "a photo of " + " and ".join(words)


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``n`` photo-like JPEGs in ``folder`` and their manifest (image, caption), made on every core; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(folder), size[0], size[1], seed) for i in range(n)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        rows = pool.map(photo_like, jobs, chunksize=max(1, n // (8 * (os.cpu_count() or 1))))
    manifest = folder / "manifest.csv"
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["image", "caption"])
    writer.writerows(rows)
    manifest.write_text(text.getvalue())
    return manifest


def run_shards(case: Case, p: Plan, work: Path, timeout_s: float) -> dict[str, Any]:
    """The photo-like images, then `openslip data make-shards` on their manifest (the CLI, as a user runs it)."""
    t0 = time.perf_counter()
    manifest = make_images(work / "images", p.images, p.image_wh)
    made = time.perf_counter() - t0
    mean_kb = statistics.fmean(f.stat().st_size for f in (work / "images").glob("*.jpg")) / 1024
    shards = work / "shards"
    argv = cli("data", "make-shards", str(manifest), str(shards), "--shard-size", str(p.shard_size))
    rc, out, err = run_process(argv, timeout_s - made)
    row = {"images": p.images, "image_size": list(p.image_wh), "jpeg_quality": 90, "mean_jpeg_kb": round(mean_kb, 1),
           "generate_s": round(made, 1), "make_shards_s": round(time.perf_counter() - t0 - made, 1)}  # fmt: skip
    if rc != 0 or not (shards / "index.json").is_file():
        return {**row, "status": failure(rc, out, err, timeout_s)}
    return {**row, "status": "ok", "path": str(shards), "shards": len(list(shards.glob("shard-*.tar")))}


# --- `openslip bench train` cases -----------------------------------------------------------------------------


def bench_argv(case: Case, p: Plan, output: Path, *, reference: str | None, shards: Path | None) -> list[str]:
    argv = cli("bench", "train", f"model={case.model}", f"train.batch_size={p.batch_size}", *p.bench_flags,
               "--output", str(output))  # fmt: skip
    if case.kind == "reference":
        argv += ["--compare-reference", str(reference)]
    if case.compile:
        argv.append("train.compile=true")
    if case.kind == "graphs":
        argv.append("train.compile_mode=reduce-overhead")
    if case.kind == "data":
        argv += ["--with-data", f"data.train={shards}", f"data.num_workers={p.workers}", f"data.augment={case.augment}"]
        if case.decode:
            argv.append(f"data.decode={case.decode}")
    else:
        argv.append("data.num_workers=0")
    return argv


def summarise(result: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The figures the check reports from one `openslip bench train` JSON."""
    mo = result["model_only"]
    row: dict[str, Any] = {
        "samples_per_s": mo["samples_per_s"],
        "mfu": mo["mfu"],
        "matmul_peak_tflops": result["matmul_peak_flops_per_s"] / 1e12,
        "peak_memory_mb": mo["peak_memory_mb"],
        "step_ms": 1e3 * mo["step_s"],
    }
    if "end_to_end" in result:
        e2e = result["end_to_end"]
        row.update(
            end_to_end_samples_per_s=e2e["samples_per_s"],
            end_to_end_ratio=e2e["ratio_to_model_only"],
            data_wait_ms_per_step=1e3 * e2e["breakdown_s"]["data"],
            minor_page_faults_per_step=e2e["minor_page_faults_per_step"],
        )
        if "loader_cpu_s_per_batch" in e2e:
            row["loader_cpu_ms_per_sample"] = 1e3 * e2e["loader_cpu_s_per_batch"] / batch_size
    if "reference" in result:
        ref = result["reference"]
        row.update(
            reference_model=ref["model"],
            reference_samples_per_s=ref["model_only"]["samples_per_s"],
            reference_mfu=ref["model_only"]["mfu"],
            reference_peak_memory_mb=ref["model_only"]["peak_memory_mb"],
            speedup_vs_reference=result["speedup_vs_reference"]["model_only"],
            reference_commit=ref.get("commit"),
            reference_timm=ref.get("timm"),
        )
    return row


def run_bench(case: Case, p: Plan, work: Path, timeout_s: float, **where: Any) -> dict[str, Any]:
    out = work / f"bench-{len(list(work.glob('bench-*.json')))}.json"
    # the dry run passes --compile but does not compile: inductor on a CPU takes minutes for the micro model
    env = {"TORCH_COMPILE_DISABLE": "1"} if p.dry_run and case.compile else None
    rc, stdout, stderr = run_process(bench_argv(case, p, out, **where), timeout_s, env)
    if rc != 0 or not out.is_file():
        return {"status": failure(rc, stdout, stderr, timeout_s)}
    result = json.loads(out.read_text())
    row = {"status": "ok", **summarise(result, p.batch_size), "machine": result.get("machine")}
    return {**row, "env": env} if env else row


# --- `openslip train` under torchrun --------------------------------------------------------------------------


def train_steps(p: Plan, rows: list[dict[str, Any]], model: str, augment: str) -> int:
    """Steps for about ``p.train_seconds``, from the end-to-end speed its data case measured (100 without one)."""
    if p.dry_run:
        return 4
    same = ("data", model, augment, "")  # the data case of the same model and augmentation, CPU decode
    speeds = [r["end_to_end_samples_per_s"] for r in rows
              if (r["kind"], r["model"], r["case"]["augment"], r["case"]["decode"]) == same
              and "end_to_end_samples_per_s" in r]  # fmt: skip
    steps = p.train_seconds * speeds[0] / p.batch_size if speeds else 100
    return int(min(max(steps, 30), 600))


def run_train(case: Case, p: Plan, work: Path, timeout_s: float, *, shards: Path, steps: int) -> dict[str, Any]:
    """`openslip train` under torchrun with one process: the NCCL path end to end (gloo on the CPU)."""
    out_dir = work / "train_run"
    log_every = 1 if p.dry_run else 10
    overrides = [f"model={case.model}", f"data.train={shards}", f"train.steps={steps}",
                 f"train.batch_size={p.batch_size}", f"train.log_every={log_every}", "train.progress=false",
                 "eval.sets=[]", f"data.augment={case.augment}", f"data.num_workers={p.workers}",
                 f"out_dir={out_dir}", *p.train_flags]  # fmt: skip
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
            "-m", "openslip.cli", "train", *overrides]  # fmt: skip
    t0 = time.perf_counter()
    rc, _, err = run_process(argv, timeout_s)
    metrics = out_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    records = [r for r in records if "loss" in r]
    row: dict[str, Any] = {"backend": "gloo" if p.dry_run else "nccl", "steps": steps,
                           "train_wall_s": round(time.perf_counter() - t0, 1),
                           "losses": [round(r["loss"], 4) for r in records]}  # fmt: skip
    if rc != 0 or not records:
        return {**row, "status": failure(rc, "", err, timeout_s), "stderr_tail": err.strip().splitlines()[-3:]}
    # the first record holds start-up (workers, cuDNN autotuning): the speed is that of the later ones
    later = records[1:] or records
    row.update(
        samples_per_s=statistics.median(r["samples_per_s"] for r in later),
        data_wait_frac=statistics.median(r["data_wait_frac"] for r in later),
        loader_cpu_ms_per_sample=statistics.median(r["data_cpu_ms_per_sample"] for r in later),
        first_loss=records[0]["loss"],
        last_loss=records[-1]["loss"],
        loss_falls=records[-1]["loss"] < records[0]["loss"],
    )
    row["data_wait_ms_per_step"] = 1e3 * row["data_wait_frac"] * p.batch_size / row["samples_per_s"]
    if not row["loss_falls"] and not p.dry_run:  # (a 4-step dry run on a micro model proves nothing either way)
        return {**row, "status": f"failed: the loss did not fall ({row['first_loss']:.3f} -> {row['last_loss']:.3f})"}
    return {**row, "status": "ok"}


# --- the report -----------------------------------------------------------------------------------------------

COLUMNS = (("case", 26), ("status", 10), ("samples/s", 10), ("MFU", 6), ("e2e/model", 9), ("loader ms/img", 13),
           ("wait ms", 8), ("peak MB", 8), ("wall s", 7))  # fmt: skip


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_line(row: dict[str, Any]) -> str:
    """One row of the table; its note (the failure, the reference's figures, the loss) follows the columns."""
    status = row["status"] if row["status"] in ("ok", "skipped") else "FAILED"
    mfu = None if row.get("mfu") is None or row["kind"] == "data" else 100 * row["mfu"]  # (data: samples/s are e2e)
    cells = [
        row["name"],
        status,
        _fmt(row.get("end_to_end_samples_per_s", row.get("samples_per_s")), ".1f"),
        _fmt(mfu, ".1f"),
        _fmt(row.get("end_to_end_ratio"), ".2f"),
        _fmt(row.get("loader_cpu_ms_per_sample"), ".2f"),
        _fmt(row.get("data_wait_ms_per_step"), ".1f"),
        _fmt(row.get("peak_memory_mb"), ".0f"),
        _fmt(row.get("wall_s"), ".0f"),
    ]
    widths = [w for _, w in COLUMNS]
    line = " ".join(f"{c:{'<' if i == 0 else '>'}{w}s}" for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return f"{line}  {note(row)}".rstrip()


def note(row: dict[str, Any]) -> str:
    if row["status"] == "skipped":
        return row["reason"]
    if row["status"] != "ok":
        return row["status"]
    if row["kind"] == "reference":
        return (f"2021 code {row['reference_samples_per_s']:.1f} samples/s, MFU {100 * row['reference_mfu']:.1f}%, "
                f"{row['reference_peak_memory_mb']:.0f} MB: openslip {row['speedup_vs_reference']:.2f}x "
                f"(timm {row.get('reference_timm') or 'not installed'})")  # fmt: skip
    if row["kind"] == "data":
        return f"model-only {row['samples_per_s']:.1f} samples/s, {row['minor_page_faults_per_step']:.0f} faults/step"
    if row["kind"] == "shards":
        return (f"{row['images']} images {row['image_size'][0]}x{row['image_size'][1]} q90 "
                f"({row['mean_jpeg_kb']:.0f} kB) in {row['generate_s']:.0f} s, {row['shards']} shards "
                f"in {row['make_shards_s']:.0f} s")  # fmt: skip
    if row["kind"] == "train":
        return (f"{row['backend']}, {row['steps']} steps, loss {row['first_loss']:.3f} -> {row['last_loss']:.3f}, "
                f"data wait {100 * row['data_wait_frac']:.0f}%")  # fmt: skip
    compiled = " (TORCH_COMPILE_DISABLE=1 in the dry run)" if row.get("env") else ""
    return f"step {row['step_ms']:.0f} ms, matmul peak {row['matmul_peak_tflops']:.3g} TFLOP/s{compiled}"


def table(rows: list[dict[str, Any]]) -> str:
    header = " ".join(f"{h:{'<' if i == 0 else '>'}{w}s}" for i, (h, w) in enumerate(COLUMNS)) + "  note"
    return "\n".join([header, *(table_line(r) for r in rows)])


# --- the check ------------------------------------------------------------------------------------------------


def why_not(
    case: Case, *, reference: str | None, shards: Path | None, decode: bool, only: set[str], left_s: float
) -> str | None:
    """Why a case does not run in this check (None: it runs), the most lasting reason first."""
    if case.kind not in only:
        return f"not in --only {','.join(sorted(only))}"
    if case.kind == "reference" and not reference:
        return "no --reference PATH (a checkout of facebookresearch/SLIP) given"
    if case.kind == "reference" and not Path(reference).expanduser().is_dir():
        return f"--reference {reference}: no such folder"
    if case.decode and not decode:
        return "data.decode is not a setting of this version of openslip"
    if left_s < case.expect_s:
        return f"time budget spent ({max(left_s, 0):.0f} s left, needs ~{case.expect_s:.0f})"
    if case.kind in ("data", "train") and shards is None:
        return "no shards (the make-shards case failed)"
    return None


def check(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = plan(args.dry_run, args.workers, args.images)
    only = set(args.only.split(",")) if args.only else set(KINDS)
    decode = decode_flag_available()
    report: dict[str, Any] = {"dry_run": p.dry_run, "budget_s": args.budget_s, "plan": asdict(p),
                              "decode_flag": decode, "cases": [], "skipped": []}  # fmt: skip
    rows: list[dict[str, Any]] = []
    print(table([]), flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        shards: Path | None = None
        for case in cases(p):
            row: dict[str, Any] = {"name": case.name, "kind": case.kind, "model": case.model, "case": asdict(case)}
            left = args.budget_s - (time.perf_counter() - t0)
            reason = why_not(case, reference=args.reference, shards=shards, decode=decode, only=only, left_s=left)
            if reason is not None:
                row.update(status="skipped", reason=reason)
                report["skipped"].append({"name": case.name, "case": asdict(case), "reason": reason})
            else:
                timeout = min(case.timeout_s, left)
                start = time.perf_counter()
                if case.kind == "shards":
                    row.update(run_shards(case, p, work, timeout))
                    shards = Path(row["path"]) if row["status"] == "ok" else None
                elif case.kind == "train":
                    steps = train_steps(p, rows, case.model, case.augment)
                    row.update(run_train(case, p, work, timeout, shards=shards, steps=steps))
                else:
                    row.update(run_bench(case, p, work, timeout, reference=args.reference, shards=shards))
                row["wall_s"] = round(time.perf_counter() - start, 1)
                machine = row.pop("machine", None)
                if machine and "machine" not in report:
                    report["machine"] = machine
                report["cases"].append(row)
            rows.append(row)
            print(table_line(row), flush=True)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["table"] = table(rows)
    print(f"\n{report['table']}", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, micro model, tiny shards: check the script itself")
    p.add_argument("--output", default="gpu_check.json", help="the JSON to write")
    p.add_argument("--reference", default=None, metavar="PATH", help="a checkout of facebookresearch/SLIP")
    p.add_argument("--budget-s", type=float, default=470.0, help="start no case that needs more than what is left")
    p.add_argument("--workers", type=int, default=14, help="loader workers of the data cases and the training run")
    p.add_argument("--images", type=int, default=4096, help="photo-like images in the shards (default 4096)")
    p.add_argument("--only", default=None, help=f"run only these kinds, comma-separated: {','.join(KINDS)}")
    args = p.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(KINDS):
        p.error(f"--only {args.only}: choose among {','.join(KINDS)}")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --dry-run to check the script on a CPU)", file=sys.stderr)
            return 2
    report = check(args)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output} ({report['wall_s']:.0f} s)")
    return 0 if all(c["status"] == "ok" for c in report["cases"]) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
